"""The `faces` command: run the pipeline or one stage now, import your own images, serve deployments, run
the offline demo.

Every command takes --config (faces.toml) and --data-dir; on failure it prints one line and exits 1.
The config is read and checked before Prefect or torch is imported (seconds of start-up), so a
mistake in it is reported at once.
"""

import argparse
import atexit
import sys
from pathlib import Path

from common.report import BadInputError
from flows import local_server
from flows.config import STAGES, PipelineConfig, load_config

MAX_NOTES = 20  # per stage printed; a crawl can note many hosts, all in its summary artifact


def _load(args: argparse.Namespace) -> PipelineConfig:
    cfg = load_config(args.config or _default_config())
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None:
        if not data_dir.strip():
            raise BadInputError("--data-dir is empty; give a folder such as --data-dir data, or leave it out")
        cfg.data_dir = data_dir
    return cfg


def _checked_stages(text: str | None) -> list[str]:
    stages = text.split(",") if text else list(STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise BadInputError(f"unknown stage(s) {unknown} in --stages; choose from {','.join(STAGES)}")
    return stages


def _default_config() -> Path | None:
    """./faces.toml when present, so `faces run` in a project folder just works."""
    path = Path("faces.toml")
    return path if path.is_file() else None


def cmd_run(args: argparse.Namespace) -> None:
    cfg = _load(args)
    stages = _checked_stages(args.stages)
    local_server.start_if_needed()
    from flows.pipeline import faces_pipeline

    results = faces_pipeline(
        data_dir=cfg.data_dir, stages=stages, force=args.force, **cfg.stage_configs(), **cfg.run_options()
    )
    _print_results(results)


def cmd_stage(args: argparse.Namespace) -> None:
    if args.stage == "validate" and (args.release or args.quarantine):
        return cmd_quarantine(args)
    cfg = _load(args)
    local_server.start_if_needed()
    from flows.pipeline import STAGE_FLOWS

    kwargs = {"run": args.run} if args.stage == "export" else {}
    stage_config = {args.stage: cfg.stage_configs()[args.stage]}
    result = STAGE_FLOWS[args.stage](
        data_dir=cfg.data_dir, force=args.force, **stage_config, **cfg.run_options(), **kwargs
    )
    _print_results({args.stage: result})


def cmd_quarantine(args: argparse.Namespace) -> None:
    from common.layout import DataRoot
    from validate import quarantine

    root = DataRoot(_load(args).data_dir)
    for crop_id in args.release or []:
        quarantine.release(crop_id, root)
        print(f"released {crop_id}; run `faces validate` to build a snapshot that includes it")
    if args.quarantine:
        reason = None if args.quarantine == "all" else args.quarantine
        rows = quarantine.list_quarantine(root, reason=reason)
        for row in rows:
            print(f"{row['crop_id']}\t{row['reasons']}\t{row['detail']}\t{row['path']}")
        print(f"{len(rows)} quarantined crop(s); release one with `faces validate --release <crop_id>`")


def cmd_forget(args: argparse.Namespace) -> None:
    from common.layout import DataRoot
    from scraper.importer import takedown_key
    from validate.takedown import forget

    cfg = _load(args)
    root = DataRoot(cfg.data_dir)
    report = forget(takedown_key(args.key, root), root, cfg.validate_)
    print(report.markdown())


def cmd_import(args: argparse.Namespace) -> None:
    from common.layout import DataRoot
    from scraper.importer import import_photos

    cfg = _load(args)
    options = {key: getattr(args, key) for key in ("paths", "licence", "source_url", "force")}
    print(import_photos(cfg.scrape, DataRoot(cfg.data_dir), **options).markdown())


def cmd_dataset(args: argparse.Namespace) -> None:
    from common.layout import DataRoot
    from validate.ready_made import build_dataset

    cfg = _load(args)
    options = {key: getattr(args, key) for key in ("name", "size", "channels", "licence", "flip")}
    print(build_dataset(args.path, DataRoot(cfg.data_dir), cfg.validate_, **options).markdown())


def cmd_sample(args: argparse.Namespace) -> None:
    from export.inference import sample

    paths = sample(args.model, n=args.n, seed=args.seed, out_dir=args.out)
    print(f"wrote {len(paths)} samples to {args.out}")


def cmd_serve(args: argparse.Namespace) -> None:
    cfg = _load(args)
    local_server.start_if_needed()
    from flows.deployments import serve_all

    serve_all(cfg)


def cmd_deploy(args: argparse.Namespace) -> None:
    cfg = _load(args)
    from flows.deployments import deploy_all

    for name in deploy_all(cfg, args.pool):
        print(f"deployed {name} on work pool {args.pool}")
    print(f"run them with `prefect worker start --pool {args.pool}` (one or more, on any machine)")


def cmd_demo(args: argparse.Namespace) -> None:
    if args.data_dir is not None and not args.data_dir.strip():
        raise BadInputError("--data-dir is empty; give a folder, or leave it out for ./demo-data")
    from demo.run import run_demo

    run_demo(Path(args.data_dir or "demo-data"), steps=args.steps, keep_serving=args.keep_serving)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of steps; give 1 or more")
    return value


def cmd_config(args: argparse.Namespace) -> None:
    from flows.config import to_toml

    print(to_toml(_load(args)), end="")


def _print_results(results: dict) -> None:
    """Per stage: its counts, its notes (what the counts cannot say), then its outputs."""
    for stage, result in results.items():
        counts = ", ".join(f"{k}={v}" for k, v in result.get("counts", {}).items())
        print(f"{stage}: {counts} ({result.get('seconds', 0)} s)")
        notes = result.get("notes", [])
        for note in notes[:MAX_NOTES]:
            print(f"  - {' '.join(str(note).split())}")  # one line each
        if len(notes) > MAX_NOTES:
            print(f"  - ... {len(notes) - MAX_NOTES} more in the stage's summary artifact")
        for label, path in result.get("outputs", {}).items():
            print(f"  {label}: {path}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="faces.toml (default: ./faces.toml if present)")
    p.add_argument("--data-dir", help="data root (default: data_dir in the config, else ./data)")


def _own_images(sub) -> None:
    """`faces import` (local photos into the raw store) and `faces dataset` (a ready-made set)."""
    p = sub.add_parser("import", help="import local photos, folders or zip archives into the raw store")
    _common(p)
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="photo files, folders (searched recursively), zips"
    )
    p.add_argument("--licence", help="licence recorded for each photo (default: [scrape] licence)")
    p.add_argument("--source-url", help="the page the photos come from, recorded as their page_url")
    p.add_argument("--force", action="store_true", help="read every file again, even unchanged ones")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "dataset", help="turn a ready-made image set (folder, MNIST, CIFAR, .npy) into a snapshot"
    )
    _common(p)
    p.add_argument("path", help="a folder of images, MNIST idx files, mnist.npz, CIFAR-10 batches, .npy/.npz")
    p.add_argument("--name", required=True, help="the dataset's name, shown on its card")
    p.add_argument("--size", type=int, choices=(32, 64, 128), help="resize every image to SIZExSIZE")
    p.add_argument("--channels", type=int, choices=(1, 3), help="1 (grey) or 3 (RGB); default: the set's own")
    p.add_argument("--licence", help="licence recorded for each image")
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help="whether training may mirror the images (default: off for digits, on otherwise)",
    )
    p.set_defaults(func=cmd_dataset)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faces", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline (or --stages) now")
    _common(p)
    p.add_argument("--stages", help="comma-separated subset, e.g. train,export")
    p.add_argument("--force", action="store_true", help="redo work whose inputs did not change")
    p.set_defaults(func=cmd_run)

    for stage in STAGES:
        p = sub.add_parser(stage, help=f"run only the {stage} stage now")
        _common(p)
        p.add_argument("--force", action="store_true", help="redo work whose inputs did not change")
        p.set_defaults(func=cmd_stage, stage=stage)
        if stage == "validate":
            p.add_argument("--release", action="append", metavar="CROP_ID", help="release a quarantined crop")
            p.add_argument(
                "--quarantine", nargs="?", const="all", metavar="REASON", help="list quarantined crops"
            )
        if stage == "export":
            p.add_argument("--run", help="the training run to export (default: the latest)")

    p = sub.add_parser("forget", help="take an image down: by image URL, page URL, sha256 or imported path")
    _common(p)
    p.add_argument("key")
    p.set_defaults(func=cmd_forget)

    _own_images(sub)

    p = sub.add_parser("sample", help="generate images from an exported generator")
    p.add_argument("--model", required=True, help="generator.pt or generator.torchscript.pt from an export")
    p.add_argument("-n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("serve", help="serve the deployments (nightly, manual, one per stage)")
    _common(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("deploy", help="register the same deployments on a process work pool, for workers")
    _common(p)
    p.add_argument(
        "--pool", required=True, help="the work pool (prefect work-pool create NAME --type process)"
    )
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("demo", help="the whole pipeline offline, on a local demo gallery")
    p.add_argument("--data-dir", help="where the demo writes (default: ./demo-data)")
    p.add_argument(
        "--steps", type=_positive_int, help="training steps (default: a few minutes on 2 CPU cores)"
    )
    p.add_argument("--keep-serving", action="store_true", help="keep the gallery up after the run")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("config", help="print the effective configuration as TOML")
    _common(p)
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Prefect's ephemeral server logs its shutdown at exit; registered first, the reason prints after
    # it (atexit runs handlers last-registered first), so it is the last line the user reads.
    failure: list[str] = []
    atexit.register(lambda: failure and print(failure[0], file=sys.stderr))
    try:
        args.func(args)
    except BadInputError as e:
        failure.append(f"faces: error: {'; '.join(str(e).splitlines())}")
    except KeyboardInterrupt:
        failure.append("faces: interrupted")
        return 130
    except Exception as e:  # one line for the user; the traceback is in the Prefect logs above
        failure.append(f"faces: {args.command} failed: {type(e).__name__}: {' '.join(str(e).split())}")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
