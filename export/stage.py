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
This module picks the run and its checkpoint, builds the folder and reports; the files come from
generator_files.py, pictures.py, evaluation.py (metrics.json) and model_card.py.
"""

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from common.clock import now_iso
from common.files import (
    atomic_write_json,
    config_hash,
    read_json,
    recover_folder_swap,
    sha256_bytes,
    sha256_file,
    swap_folder,
    temp_folder_for,
)
from common.layout import DataRoot
from common.report import BadInputError, StageReport
from export.config import ExportConfig
from export.evaluation import FittedImages, evaluate, find_dataset, metrics_rows
from export.generator_files import write_generator_files
from export.model_card import write_model_card
from export.pictures import (
    grid_latents,
    write_grid_and_samples,
    write_interpolation,
    write_training_gif,
    write_training_plot,
)
from export.redaction import NEEDS_REEXPORT
from models.checkpoint import CorruptCheckpointError, best_path, list_checkpoints, load_checkpoint
from models.config import TrainConfig
from models.data import open_images
from models.dcgan import build_generator
from models.device import pick_device
from models.fid_kid import check_fid_setup

Progress = Callable[[int, int, str], None]


# --- which run, which checkpoint ---------------------------------------------------------------------


def resolve_run(root: DataRoot, run: str | None = None) -> Path:
    """runs/<run>, or the run runs/latest points at."""
    path = root.run_dir(run) if run else root.latest_run
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
    """The flows' cache key: `checkpoint_fingerprint`, or another one while a takedown has marked the
    export for re-export (export.redaction), so a cached result never stands in for what it deleted."""
    run_dir = resolve_run(root, run)
    fingerprint = checkpoint_fingerprint(config, run_dir)
    if read_export_info(root.export_dir(run_dir.name)).get(NEEDS_REEXPORT):
        return sha256_bytes(f"{fingerprint}|{NEEDS_REEXPORT}".encode())
    return fingerprint


def checkpoint_fingerprint(config: ExportConfig, run_dir: Path) -> str:
    """sha256 of the checkpoint that would be exported, with the config's hash (kept in export.json)."""
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
    recover_folder_swap(final)
    fingerprint = checkpoint_fingerprint(config, run_dir)
    previous = read_export_info(final)
    if not force and previous.get("fingerprint") == fingerprint and not previous.get(NEEDS_REEXPORT):
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
        check_fid_setup(config.inception_weights)
    notes: list[str] = []
    ckpt, ckpt_path = load_run_checkpoint(run_dir, notes)
    tmp = temp_folder_for(final)
    try:
        info, result = build_export(config, root, run_dir, ckpt, ckpt_path, fingerprint, tmp, notes, progress)
        swap_folder(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if on_progress is not None:
        on_progress(total, total, "done")
    report = report_for(final, info, result, skipped=False)
    report.seconds = time.monotonic() - started
    return report


def load_generator(ckpt: dict) -> torch.nn.Module:
    """The checkpoint's EMA generator in eval mode (its batch-norm statistics are its own)."""
    generator = build_generator(TrainConfig(**ckpt["config"]))
    generator.load_state_dict(ckpt["generator_ema"])
    return generator.eval()


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
    """Every file of the export into `out`; returns export.json's and metrics.json's content."""
    device = pick_device(config.device, "export")
    train_config = TrainConfig(**ckpt["config"])
    generator, nz = load_generator(ckpt), train_config.nz

    progress("generator files")
    grid_z = grid_latents(nz, config.seed)
    exported = write_generator_files(generator, ckpt, run_dir.name, out, config, grid_z, notes)
    generator.to(device)
    progress("sample grid and samples")
    write_grid_and_samples(generator, grid_z, out, config, device)
    progress("interpolation")
    write_interpolation(generator, nz, out, config, device)
    progress("training over time")
    write_training_gif(run_dir, out, notes)

    dataset_dir = find_dataset(root, ckpt["dataset_id"], notes, run_dir)
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
    write_training_plot(run_dir, result["swd_noise_floor"], out)
    info = export_info(config, run_dir, ckpt, ckpt_path, fingerprint, device, exported, notes)
    write_model_card(out, run_dir, ckpt, dataset_dir, len(real), result, info)
    atomic_write_json(out / "export.json", info)
    return info, result


def export_info(
    config: ExportConfig,
    run_dir: Path,
    ckpt: dict,
    ckpt_path: Path,
    fingerprint: str,
    device: torch.device,
    exported: dict,
    notes: list[str],
) -> dict:
    """export.json: which checkpoint of which run, the fingerprint, the settings, the files, the notes."""
    return {
        "run": run_dir.name,
        "checkpoint": f"{run_dir.name}/checkpoints/{ckpt_path.name}",
        "step": int(ckpt["step"]),
        "dataset_id": ckpt["dataset_id"],
        "fingerprint": fingerprint,
        "config": config.model_dump(mode="json"),
        "created": now_iso(),
        "device": str(device),
        "files": exported,
        "notes": notes,
    }


# --- the report ----------------------------------------------------------------------------------


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
