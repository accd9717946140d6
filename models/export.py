"""Export a training run: samples, pictures, quality metrics, the generator for inference, a model card.

    exports/<run>/
      grid.png                    8x8 samples from the EMA generator, fixed noise (ExportConfig.seed)
      samples/sample-0000.png     n_samples single images, written from the TorchScript file itself
      interpolation.png, .gif     spherical interpolation between random latents
      training.gif                the run's fixed-noise grids over training (runs/<run>/grids/)
      training.png                losses and SWD over steps, with the noise floor
      memorisation.png            samples beside their nearest training crop
      metrics.json                SWD per level with the real-vs-real noise floor, MS-SSIM diversity, ...
      generator.pt                weights (torch.load(..., weights_only=True)) + config
      generator.torchscript.pt    runs without this project; generator.onnx too when onnx is installed
      MODEL_CARD.md               dataset, sources, licences, config, metrics, intended use, takedown
      export.json                 what was exported from which checkpoint (and the input fingerprint)

The folder is built beside the old one and swapped in, so it appears whole or the old one stays.
"""

import csv
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from common.files import (
    atomic_write_json,
    atomic_write_text,
    atomic_write_with,
    config_hash,
    fsync_dir,
    sha256_bytes,
    sha256_file,
)
from common.layout import DataRoot
from common.report import BadInputError, StageReport
from models import inference, metrics, plots
from models.checkpoint import CorruptCheckpointError, best_path, list_checkpoints, load_checkpoint
from models.config import ExportConfig, TrainConfig
from models.data import fit_images, open_images
from models.dcgan import build_generator

Progress = Callable[[int, int, str], None]

GRID_SIDE = 8
INTERPOLATION_ROWS = 4  # pairs of latents in interpolation.png
GIF_IMAGES = 8  # images moving together in interpolation.gif
GIF_KEYFRAMES = 4  # latents each of them loops through
MAX_TRAINING_FRAMES = 100
_TMP, _OLD = ".tmp-", ".old-"
MODEL_NAMES = {"dcgan": "DCGAN", "mlp": "fully connected (MLP) GAN"}


# --- which run, which checkpoint ---------------------------------------------------------------------


def resolve_run(root: DataRoot, run: str | None = None) -> Path:
    """runs/<run>, or the run runs/latest points at."""
    path = root.runs_dir / (run or "latest")
    if not path.exists():
        known = (
            sorted(p.name for p in root.runs_dir.iterdir() if p.is_dir()) if root.runs_dir.is_dir() else []
        )
        what = f"run {run!r}" if run else "runs/latest"
        raise BadInputError(
            f"no {what} under {root.runs_dir}: train first (faces train) or pass one of: "
            f"{', '.join(known) or 'none'}"
        )
    return path.resolve()


def checkpoint_candidates(run_dir: Path) -> list[Path]:
    """best.pt first, then the step checkpoints newest first."""
    directory = run_dir / "checkpoints"
    found = [best_path(directory)] if best_path(directory).is_file() else []
    found += [p for _, p in reversed(list_checkpoints(directory))]
    if not found:
        raise BadInputError(
            f"{directory}: no checkpoint (best.pt or step-*.pt); train the run first (faces train)"
        )
    return found


def input_fingerprint(config: ExportConfig, root: DataRoot, run: str | None = None) -> str:
    """sha256 of the checkpoint that would be exported, with the config's hash: the flows' cache key."""
    run_dir = resolve_run(root, run)
    checkpoint = checkpoint_candidates(run_dir)[0]
    return sha256_bytes(f"{run_dir.name}|{sha256_file(checkpoint)}|{config_hash(config)}".encode())


def load_run_checkpoint(run_dir: Path, notes: list[str]) -> tuple[dict, Path]:
    """The first candidate that loads and passes the checks: a damaged best.pt falls back to a step file."""
    errors = []
    for path in checkpoint_candidates(run_dir):
        try:
            return load_checkpoint(path), path
        except CorruptCheckpointError as e:
            errors.append(str(e))
            notes.append(f"skipped a damaged checkpoint: {e}")
    raise BadInputError(f"every checkpoint of {run_dir.name} is damaged: {'; '.join(errors)}; train again")


# --- the real images ---------------------------------------------------------------------------------


class FittedImages:
    """A dataset's images at the generator's size and channels, converted lazily a slice at a time."""

    def __init__(self, images: np.ndarray, config: TrainConfig) -> None:
        self.images, self.size, self.channels = images, config.image_size, config.channels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        return fit_images(self.images[rows], self.size, self.channels).numpy()


def find_dataset(root: DataRoot, dataset_id: str, notes: list[str]) -> Path:
    """The run's snapshot; when a takedown or retention removed it, the latest one (with a note)."""
    own = root.dataset_dir(dataset_id)
    if (own / "images.npy").is_file():
        return own
    latest = root.latest_dataset
    if latest.exists() and (latest.resolve() / "images.npy").is_file():
        notes.append(
            f"dataset {dataset_id} (the run's) is gone; real-image metrics use the latest snapshot "
            f"{latest.resolve().name}"
        )
        return latest.resolve()
    raise BadInputError(
        f"dataset {dataset_id} is gone and there is no datasets/latest: run faces validate first"
    )


def read_index(dataset_dir: Path) -> list[dict]:
    path = dataset_dir / "index.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- the pieces --------------------------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(
            f"[export] device = {name!r} but CUDA is not available; use device = 'auto' or 'cpu'"
        )
    return torch.device(name)


def write_generator(
    generator: torch.nn.Module, ckpt: dict, run: str, out: Path, config: ExportConfig
) -> dict:
    """generator.pt (weights), generator.torchscript.pt and, when onnx is installed, generator.onnx."""
    train_config = TrainConfig(**ckpt["config"])
    info = {
        "run": run,
        "step": int(ckpt["step"]),
        "dataset_id": ckpt["dataset_id"],
        "image_size": train_config.image_size,
        "channels": train_config.channels,
        "model": train_config.model,
    }
    cpu_generator = generator.to("cpu").eval()
    weights = {
        "format": inference.WEIGHTS_FORMAT,
        "version": 1,
        "generator": cpu_generator.state_dict(),
        "config": train_config.model_dump(mode="json"),
        "info": info,
    }
    atomic_write_with(out / "generator.pt", lambda tmp: torch.save(weights, tmp))
    inference.save_torchscript(cpu_generator, train_config.nz, info, out / "generator.torchscript.pt")
    result = {"torchscript": "generator.torchscript.pt", "weights": "generator.pt", "onnx": None}
    if config.onnx:
        try:
            result["onnx"] = write_onnx(cpu_generator, train_config.nz, out / "generator.onnx")
        except Exception as e:  # optional: the TorchScript file is the one that must exist
            result["onnx_error"] = f"{type(e).__name__}: {e}"[:500]
    return result


def write_onnx(generator: torch.nn.Module, nz: int, path: Path) -> str | None:
    """ONNX with a dynamic batch axis, when the onnx package is there (it is optional).

    Weights are embedded (external_data=False): a DCGAN is far below ONNX's 2 GB limit, and one file
    survives the atomic rename that a file plus its `.data` sidecar would not.
    """
    try:
        import onnx  # noqa: F401
    except ImportError:
        return None
    batch = torch.export.Dim("batch", min=1)

    def export(tmp: Path) -> None:
        torch.onnx.export(
            generator,
            (torch.zeros(2, nz),),
            str(tmp),
            input_names=["z"],
            output_names=["image"],
            dynamic_shapes={"z": {0: batch}},
            external_data=False,
            verbose=False,
        )

    atomic_write_with(path, export, suffix=".onnx")
    return path.name


def torchscript_matches(generator: torch.nn.Module, path: Path, z: torch.Tensor) -> float:
    """Largest pixel difference (in [-1, 1] units) between the PyTorch and the TorchScript generator."""
    scripted, _ = inference.load_torchscript(path, torch.device("cpu"))
    with torch.no_grad():
        return float((generator.cpu()(z) - scripted(z)).abs().max())


def interpolation_frames(
    generator, nz: int, steps: int, seed: int, device
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A strip per pair of latents (rows of `steps` images), and the frames of a looping GIF."""
    z = inference.latents(2 * INTERPOLATION_ROWS, nz, seed + 2)
    ts = np.linspace(0, 1, steps)
    strip = torch.cat(
        [
            torch.stack([inference.slerp(z[2 * r], z[2 * r + 1], t) for t in ts])
            for r in range(INTERPOLATION_ROWS)
        ]
    )
    strip_images = plots.image_grid(inference.generate(generator, strip, device), columns=steps)
    keys = inference.latents(GIF_KEYFRAMES * GIF_IMAGES, nz, seed + 3).view(GIF_KEYFRAMES, GIF_IMAGES, nz)
    path = [
        inference.slerp(keys[k], keys[(k + 1) % GIF_KEYFRAMES], t)
        for k in range(GIF_KEYFRAMES)
        for t in np.linspace(0, 1, steps, endpoint=False)
    ]
    images = inference.generate(generator, torch.cat(path), device)  # one batched pass for every frame
    frames = [plots.image_grid(chunk, GIF_IMAGES) for chunk in np.split(images, len(path))]
    return strip_images, frames


def training_frames(run_dir: Path) -> list[np.ndarray]:
    """The run's fixed-noise grids in step order, captioned; at most MAX_TRAINING_FRAMES, evenly spaced."""
    from PIL import Image

    grids = sorted(
        (int(p.stem.split("-", 1)[1]), p)
        for p in (run_dir / "grids").glob("step-*.png")
        if p.stem[5:].isdigit()
    )
    if len(grids) > MAX_TRAINING_FRAMES:
        keep = np.unique(np.linspace(0, len(grids) - 1, MAX_TRAINING_FRAMES).round().astype(int))
        grids = [grids[k] for k in keep]
    frames = []
    for step, path in grids:
        try:
            with Image.open(path) as im:
                frames.append(plots.with_caption(np.asarray(im.convert("RGB")), f"step {step}"))
        except OSError:  # a grid cut short by a kill: leave it out
            continue
    return frames


def evaluate(
    generator, nz: int, real: FittedImages, config: ExportConfig, device, out: Path, progress: Callable
) -> dict:
    """SWD against the noise floor, MS-SSIM diversity, memorisation (+ FID/KID when configured)."""
    rng = np.random.default_rng(config.seed)
    n = min(config.eval_samples, len(real) // 2)
    if n < 2:
        raise BadInputError(f"the dataset has {len(real)} image(s); SWD needs at least 4 (two halves of 2)")
    real_rows = np.sort(rng.choice(len(real), 2 * n, replace=False))
    real_sample = real[real_rows]
    reference, _ = metrics.split_halves(real_sample, config.seed)
    fake = inference.generate(generator, inference.latents(n, nz, config.seed + 4), device)
    progress("SWD against the noise floor")
    sort_on = device if device.type == "cuda" else None  # numpy sorts faster on the CPU
    result: dict[str, Any] = {
        "swd": metrics.sliced_wasserstein(reference, fake, seed=config.seed, device=sort_on),
        "swd_noise_floor": metrics.swd_noise_floor(real_sample, seed=config.seed, device=sort_on),
    }
    progress("MS-SSIM diversity")
    k = min(config.diversity_samples, len(real), n)
    result["ms_ssim_diversity"] = {
        "generated": metrics.ms_ssim_diversity(fake[:k], seed=config.seed),
        "real": metrics.ms_ssim_diversity(real_sample[:k], seed=config.seed),
    }
    progress("nearest training crops")
    shown = fake[: config.memorisation_samples]
    memo = metrics.memorisation(shown, real, seed=config.seed)
    nearest = real[np.asarray(memo["nearest_index"])]
    plots.save_png(out / "memorisation.png", plots.memorisation_sheet(shown, nearest, memo["nearest_rms"]))
    result["memorisation"] = memo
    if config.inception_weights:
        progress("FID and KID")
        result["fid_kid"] = metrics.fid_kid(real_sample, fake, config.inception_weights, device=str(device))
    return result


# --- the model card ----------------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def metrics_rows(result: dict) -> list[dict]:
    """The metrics as table rows: generated beside the real-data reference."""
    swd, floor = result["swd"], result["swd_noise_floor"]
    rows = [
        {"metric": f"SWD x1000, {res} px", "generated": round(g, 2), "real": round(f, 2)}
        for res, g, f in zip(swd["resolutions"], swd["levels"], floor["levels"], strict=True)
    ]
    rows.append(
        {
            "metric": "SWD x1000, mean",
            "generated": round(swd["mean"], 2),
            "real": round(floor["mean"], 2),
        }
    )
    div = result["ms_ssim_diversity"]
    rows.append(
        {
            "metric": "MS-SSIM between samples (lower = more diverse)",
            "generated": round(div["generated"]["mean"], 4),
            "real": round(div["real"]["mean"], 4),
        }
    )
    memo = result["memorisation"]
    rows.append(
        {
            "metric": "nearest training crop, median RMS pixel distance",
            "generated": round(memo["median_rms"], 2),
            "real": None if memo["real_to_real_rms"] is None else round(memo["real_to_real_rms"], 2),
        }
    )
    if "fid_kid" in result:
        rows.append({"metric": "FID", "generated": round(result["fid_kid"]["fid"], 2), "real": None})
        rows.append(
            {
                "metric": "KID x1000",
                "generated": round(result["fid_kid"]["kid_x1000"], 2),
                "real": None,
            }
        )
    return rows


def model_card(
    run_info: dict,
    ckpt: dict,
    dataset_dir: Path,
    n_images: int,
    index: list[dict],
    result: dict,
    exported: dict,
) -> str:
    train_config = ckpt["config"]
    hosts = Counter(urlsplit(r.get("source_url") or "").hostname or "(local)" for r in index)
    licences = Counter(r.get("licence") or "(unknown)" for r in index)
    ckpt_metrics = ckpt.get("metrics") or {}
    seconds = ckpt_metrics.get("train_seconds", run_info.get("train_seconds"))
    floor = result["swd_noise_floor"]
    lines = [
        f"# Model card: `{run_info.get('run', exported['run'])}`",
        "",
        "![samples](grid.png)",
        "",
        f"A {MODEL_NAMES.get(train_config['model'], train_config['model'])} that generates "
        f"{train_config['image_size']}x{train_config['image_size']} face images, "
        f"trained on dataset `{ckpt['dataset_id']}`. "
        f"Exported {exported['created']} from `{exported['checkpoint']}` (step {ckpt['step']}).",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| dataset | `{ckpt['dataset_id']}` ({n_images} images) |",
        f"| steps | {ckpt['step']} ({ckpt_metrics.get('images_seen', 'n/a')} images seen) |",
        f"| training time | {_fmt(seconds / 3600 if seconds else None)} h ({_fmt(seconds)} s) |",
        f"| device | {run_info.get('device', 'unknown')}, {run_info.get('precision', '')}, "
        f"{run_info.get('world_size', 1)} process(es) |",
        f"| started / finished | {run_info.get('started', '?')} / {run_info.get('finished', '?')} |",
        f"| warm start from | {run_info.get('parent') or 'none'} |",
        "",
        "<details><summary>Config (<code>[train]</code>)</summary>",
        "",
        "```json",
        json.dumps(train_config, indent=2, sort_keys=True),
        "```",
        "",
        "</details>",
        "",
        "## Quality",
        "",
        "Sliced Wasserstein distance as ProGAN measures it (x1000, lower is better): "
        f"{result['swd']['images']} generated images against as many real ones; the noise floor compares "
        "two disjoint halves of the "
        f"real images ({floor['images']} each): a generator cannot be expected to score below it. "
        "MS-SSIM between random pairs of images: higher than the real figure means less diverse samples "
        "(mode collapse). Memorisation: the pixel distance from a sample to its nearest training crop, "
        "beside the same distance between real crops; much smaller means copied faces "
        "(see `memorisation.png`).",
        "",
        "| metric | generated | real (noise floor) |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {r['metric']} | {r['generated']} | {'' if r['real'] is None else r['real']} |"
        for r in metrics_rows(result)
    ]
    if "fid_kid" not in result:
        lines += ["", "FID/KID: not measured (set `[export] inception_weights` to a local Inception file)."]
    lines += [
        "",
        "![training](training.png)",
        "",
        "## Data sources",
        "",
        "| host | images |",
        "|---|---:|",
    ]
    lines += [f"| {h} | {n} |" for h, n in hosts.most_common()] or ["| (no index.csv) | |"]
    lines += ["", "| licence | images |", "|---|---:|"]
    lines += [f"| {lic} | {n} |" for lic, n in licences.most_common()] or ["| (no index.csv) | |"]
    lines += [
        "",
        f"Per-image provenance (source URL, page, licence, fetch time): `{dataset_dir / 'index.csv'}`.",
        "",
        "## Intended use",
        "",
        "Research, teaching and demonstrations of generative models: sample grids, interpolations, "
        "benchmarks of training speed and quality. The images are of people who do not exist, but they "
        "are learned from photographs of people who do.",
        "",
        "Not for: identifying, verifying or profiling anyone; making images that pass as real photographs "
        "of real people (deception, impersonation, fake profiles); training or testing face recognition; "
        "any decision about a person.",
        "",
        "## Limitations",
        "",
        "- The data is whatever the crawled sites publish: it over-represents the people those sites show "
        "(often adults, lighter skin, Western studio or press photography, smiling or neutral frontal poses) "
        "and under-represents others (children, older people, darker skin, head coverings, glasses, "
        "disabilities, profile views, low light). Samples inherit those gaps and can amplify them.",
        "- Only faces that the detector found, aligned and passed the quality checks are in it: blurred, "
        "occluded, small or strongly turned faces are filtered out.",
        f"- At {train_config['image_size']} px, fine detail (teeth, eyes, hair) is coarse; "
        "artefacts are common.",
        "- A licence recorded per image is what the source page said; it is not legal advice. Check the "
        "licences above before publishing samples.",
        "- Metrics without a pretrained network (SWD, MS-SSIM) measure statistics of patches, not realism "
        "as a person judges it; SWD ignores a colour shift of the whole set by design.",
        "",
        "## Taking an image down",
        "",
        "Anyone whose photo is in the data can ask for it to be removed. The operator runs",
        "",
        "```",
        "faces forget <image URL | page URL | sha256>",
        "```",
        "",
        "which deletes the image, its crops and every dataset snapshot that holds it, records the URL so it "
        "is never fetched again, and builds a new snapshot without it. A model already trained on it keeps "
        "what it learned: retrain (the nightly run does) and export again, then delete this export.",
    ]
    return "\n".join(lines) + "\n"


# --- the stage ---------------------------------------------------------------------------------------


def export(
    config: ExportConfig,
    root: DataRoot,
    *,
    run: str | None = None,
    force: bool = False,
    on_progress: Progress | None = None,
) -> StageReport:
    """Export a run (default: runs/latest) into exports/<run>/ (see the module docstring)."""
    started = time.monotonic()
    run_dir = resolve_run(root, run)
    final = root.export_dir(run_dir.name)
    recover_interrupted_swap(final)
    fingerprint = input_fingerprint(config, root, run_dir.name)
    previous = read_export_info(final)
    if not force and previous.get("fingerprint") == fingerprint:
        report = report_for(final, previous, metrics_of(final), skipped=True)
        report.seconds = time.monotonic() - started
        return report

    total, done = 10, 0

    def progress(message: str) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(min(done, total), total, message)

    if config.inception_weights:
        metrics.check_fid_setup(config.inception_weights)
    notes: list[str] = []
    ckpt, ckpt_path = load_run_checkpoint(run_dir, notes)
    tmp = final.parent / f"{_TMP}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        info, result = build_export(config, root, run_dir, ckpt, ckpt_path, fingerprint, tmp, notes, progress)
        swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if on_progress is not None:
        on_progress(total, total, "done")
    report = report_for(final, info, result, skipped=False)
    report.seconds = time.monotonic() - started
    return report


def build_export(
    config: ExportConfig,
    root: DataRoot,
    run_dir: Path,
    ckpt: dict,
    ckpt_path: Path,
    fingerprint: str,
    out: Path,
    notes: list[str],
    progress: Callable[[str], None],
) -> tuple[dict, dict]:
    device = pick_device(config.device)
    train_config = TrainConfig(**ckpt["config"])
    generator = build_generator(train_config)
    generator.load_state_dict(ckpt["generator_ema"])
    generator.eval()
    nz = train_config.nz

    progress("generator files")
    exported = write_generator(generator, ckpt, run_dir.name, out, config)
    grid_z = inference.latents(GRID_SIDE * GRID_SIDE, nz, config.seed)
    if config.onnx and exported["onnx"] is None:
        reason = exported.pop("onnx_error", "the onnx package is not installed (pip install onnx onnxscript)")
        notes.append(f"generator.onnx not written: {reason}")
    exported["torchscript_max_abs_diff"] = torchscript_matches(
        generator, out / "generator.torchscript.pt", grid_z
    )
    generator.to(device)

    progress("sample grid and samples")
    grid = inference.generate(generator, grid_z, device)
    plots.save_png(out / "grid.png", plots.image_grid(grid, columns=GRID_SIDE))
    inference.sample(
        out / "generator.torchscript.pt", config.n_samples, config.seed + 1, out / "samples", device
    )

    progress("interpolation")
    strip, frames = interpolation_frames(generator, nz, config.interpolation_steps, config.seed, device)
    plots.save_png(out / "interpolation.png", strip)
    plots.save_gif(out / "interpolation.gif", frames, ms_per_frame=80)

    progress("training over time")
    grids = training_frames(run_dir)
    if grids:
        plots.save_gif(out / "training.gif", grids, ms_per_frame=200, last_frame_ms=1500)
    else:
        notes.append(f"no fixed-noise grids in {run_dir / 'grids'}: training.gif not written")

    dataset_dir = find_dataset(root, ckpt["dataset_id"], notes)
    real = FittedImages(open_images(dataset_dir / "images.npy"), train_config)
    result = evaluate(generator, nz, real, config, device, out, progress)
    result["checkpoint"] = {
        "file": ckpt_path.name,
        "step": int(ckpt["step"]),
        "dataset_id": ckpt["dataset_id"],
    }
    result["reference_dataset"] = dataset_dir.name
    atomic_write_json(out / "metrics.json", result)

    progress("training plot and model card")
    floor = result["swd_noise_floor"]
    plots.training_plot(
        plots.read_metrics(run_dir / "metrics.jsonl"), floor["mean"], floor["images"], out / "training.png"
    )
    run_info = read_json(run_dir / "run.json")
    info = {
        "run": run_dir.name,
        "checkpoint": f"{run_dir.name}/checkpoints/{ckpt_path.name}",
        "step": int(ckpt["step"]),
        "dataset_id": ckpt["dataset_id"],
        "fingerprint": fingerprint,
        "config": config.model_dump(mode="json"),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "files": exported,
        "notes": notes,
    }
    card = model_card(run_info, ckpt, dataset_dir, len(real), read_index(dataset_dir), result, info)
    atomic_write_text(out / "MODEL_CARD.md", card)
    atomic_write_json(out / "export.json", info)
    return info, result


# --- the folder swap and the report -------------------------------------------------------------------


def readable_by_all(folder: Path) -> None:
    """Temporary files are created private (0600); an export is meant to be shared, so honour the umask."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def swap_in(tmp: Path, final: Path) -> None:
    """Replace `final` by `tmp`: the old folder is moved aside first and removed only after the swap."""
    readable_by_all(tmp)
    old = final.parent / f"{_OLD}{final.name}"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_interrupted_swap(final: Path) -> None:
    """A kill between the two renames of swap_in leaves only the old folder aside: put it back."""
    old = final.parent / f"{_OLD}{final.name}"
    if old.is_dir() and not final.exists():
        os.rename(old, final)
    for leftover in final.parent.glob(f"{_TMP}{final.name}-*") if final.parent.is_dir() else []:
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def read_export_info(final: Path) -> dict:
    return read_json(final / "export.json")


def metrics_of(final: Path) -> dict:
    return read_json(final / "metrics.json")


def report_for(final: Path, info: dict, result: dict, skipped: bool) -> StageReport:
    outputs = {
        "grid": final / "grid.png",
        "model_card": final / "MODEL_CARD.md",
        "metrics": final / "metrics.json",
        "samples": final / "samples",
        "torchscript": final / "generator.torchscript.pt",
        "weights": final / "generator.pt",
        "interpolation": final / "interpolation.gif",
        "training_gif": final / "training.gif",
        "training_plot": final / "training.png",
        "memorisation": final / "memorisation.png",
        "onnx": final / "generator.onnx",
    }
    counts = {
        "step": int(info.get("step", 0)),
        "samples": len(list((final / "samples").glob("*.png"))) if (final / "samples").is_dir() else 0,
    }
    notes = [f"exported {info.get('checkpoint', '?')} into {final}"] + list(info.get("notes", []))
    if skipped:
        notes.insert(0, "checkpoint and config unchanged since the last export; force = true redoes it")
    if result.get("swd"):
        notes.append(
            f"SWD x1000 {result['swd']['mean']:.2f} (noise floor {result['swd_noise_floor']['mean']:.2f}); "
            f"MS-SSIM {result['ms_ssim_diversity']['generated']['mean']:.3f} "
            f"(real {result['ms_ssim_diversity']['real']['mean']:.3f})"
        )
    return StageReport(
        stage="export",
        counts=counts,
        outputs={k: str(v) for k, v in outputs.items() if v.exists()},
        notes=notes,
        tables={"metrics": metrics_rows(result)} if result.get("swd") else {},
        skipped=skipped,
    )
