"""Checkpoints: written atomically, loaded with weights_only, the last K kept, a damaged one skipped.

A checkpoint is a plain dict (docs/DESIGN.md, "runs/<run>/") of tensors, dicts, lists, numbers and
strings, so `torch.load(path, weights_only=True)` reads it without running any pickled code.
Writes go to a temporary file that is fsynced and renamed, so a kill leaves the old file or the new
one, never half of one. A file damaged some other way (a full disk, a copy cut short) fails to load
or fails the checks below; it is renamed to `*.corrupt` and the previous checkpoint is used instead.
"""

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from common.files import atomic_write_with
from models import ddp

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = (
    "generator",
    "discriminator",
    "generator_ema",
    "opt_g",
    "opt_d",
    "scaler",
    "step",
    "rng",
    "config",
    "dataset_id",
    "metrics",
)
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


class CorruptCheckpointError(Exception):
    """A checkpoint file that cannot be read, lacks keys, or holds non-finite weights."""


def step_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step}.pt"


def best_path(directory: Path) -> Path:
    return directory / "best.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint lacks {missing}")
    return atomic_write_with(path, lambda tmp: torch.save(state, tmp))


def save_step_checkpoint(directory: Path, state: dict[str, Any], keep: int, best: bool) -> Path:
    """Write step-<n>.pt for the state's step (best.pt first if `best`), keep the newest `keep`.

    best.pt goes first: a run killed between the two files resumes from the step before, whose
    best_swd is the older one, so the same evaluation writes best.pt again. The other order left a
    best.pt older than the best_swd the resumed run believed it had saved."""
    path = step_path(directory, state["step"])
    if best:
        copy_checkpoint(save_checkpoint(best_path(directory), state), path)
    else:
        save_checkpoint(path, state)
    prune(directory, keep)
    return path


def copy_checkpoint(src: Path, dst: Path) -> Path:
    return atomic_write_with(dst, lambda tmp: shutil.copyfile(src, tmp))


def _finite(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state_dict.values() if t.is_floating_point())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check one checkpoint; CorruptCheckpointError names what is wrong with it."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad magic, a pickle that is not plain data
        raise CorruptCheckpointError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CorruptCheckpointError(f"{path}: not a training checkpoint (has {keys})")
    for net in ("generator", "discriminator", "generator_ema"):
        if not _finite(state[net]):
            raise CorruptCheckpointError(f"{path}: {net} holds NaN or Inf weights")
    return state


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """The step checkpoints in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


def load_latest(directory: Path, map_location: str | torch.device = "cpu") -> tuple[dict, Path] | None:
    """The newest checkpoint that loads and passes the checks; damaged ones are set aside on the way."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path, map_location), path
        except CorruptCheckpointError as e:
            aside = path.with_name(path.name + ".corrupt")
            log.warning("%s; moved to %s, trying the previous checkpoint", e, aside.name)
            path.replace(aside)
    return None


def load_latest_everywhere(
    directory: Path, device: torch.device, dist: ddp.Dist
) -> tuple[dict[str, Any], Path] | None:
    """The newest good checkpoint in `directory`, the same one in every process under torchrun.

    Rank 0 picks it (setting damaged ones aside); the others load the file it picked.
    """
    found = load_latest(directory, map_location=device) if dist.is_main else None
    path = ddp.broadcast(found[1] if found else None, dist)
    if path is None or found is not None:
        return found
    return load_checkpoint(path, map_location=device), path


def match_optimizer_flags(saved: dict[str, Any], opt: torch.optim.Optimizer) -> dict[str, Any]:
    """A saved optimiser state with `opt`'s kernel flags (a CUDA run resumed on the CPU, or back)."""
    flags = ("fused", "foreach", "capturable")
    groups = [
        {**group, **{k: current.get(k) for k in flags}}
        for group, current in zip(saved["param_groups"], opt.param_groups, strict=True)
    ]
    return {**saved, "param_groups": groups}


def prune(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` step checkpoints (best.pt is never touched)."""
    removed = []
    for _, path in list_checkpoints(directory)[:-keep]:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def restore_rng(
    generator: torch.Generator, rng: dict[str, Any], dist: ddp.Dist, fresh_seed: int
) -> str | None:
    """Put back this process's random state from a checkpoint's `rng`; a note when it cannot.

    On another device kind or process count the saved states do not fit: the stream is reseeded
    with `fresh_seed` (still reproducible) and the note says that random numbers differ.
    """
    if rng["device_type"] == generator.device.type and rng["world_size"] == dist.world_size:
        # RNG states are CPU byte tensors, whatever map_location moved them to.
        generator.set_state(rng["generators"][dist.rank].cpu())
        torch.set_rng_state(rng["torch"].cpu())
        return None
    generator.manual_seed(fresh_seed)
    return (
        f"resumed on {generator.device.type} x{dist.world_size} from a checkpoint made on "
        f"{rng['device_type']} x{rng['world_size']}: random numbers differ from an uninterrupted run"
    )
