"""Watching a training run: warnings when D overpowers G or G collapses, and the metrics log.

`Watch` turns logged losses and fixed-noise samples into warnings (logged once per episode, kept
for the report). `MetricsLog` appends one JSON object per row to metrics.jsonl and mirrors the
numbers and grids to TensorBoard when the `tensorboard` package is installed.
"""

import json
import logging
from collections import deque
from pathlib import Path
from typing import Any

import torch

from common.files import atomic_write_text
from models.config import TrainConfig

log = logging.getLogger("models.train")


def diversity(images: torch.Tensor) -> float:
    """Mean pairwise L2 distance between images: near zero when they are all alike."""
    return float(torch.pdist(images.flatten(1).float()).mean())


class Watch:
    """Raises a warning (once per episode) when D wins outright or G's samples collapse."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.rows: deque[tuple[float, float]] = deque(maxlen=config.watch_window)
        self.overpowered = False
        self.collapsed = False
        self.was_diverse = False
        self.warnings: list[str] = []

    def losses(self, step: int, loss_d: float, loss_g: float) -> bool:
        """D overpowers G when its loss stays near zero for a window of rows while G's loss climbs."""
        self.rows.append((loss_d, loss_g))
        full = len(self.rows) == self.rows.maxlen
        now = (
            full and all(d < self.config.overpower_d_loss for d, _ in self.rows) and loss_g > self.rows[0][1]
        )
        if now and not self.overpowered:
            self._warn(
                f"step {step}: the discriminator overpowers the generator (D loss < "
                f"{self.config.overpower_d_loss} for {len(self.rows)} rows while G loss climbs to "
                f"{loss_g:.2f}); "
                "try label_smoothing = 0.1, a lower lr_d or loss = 'hinge'"
            )
        self.overpowered = now
        return now

    def samples(self, step: int, fake: torch.Tensor, real: torch.Tensor) -> float:
        """Diversity of the fixed-noise samples relative to real images; warns when they collapse."""
        ratio = diversity(fake) / max(diversity(real), 1e-8)
        low = ratio < self.config.collapse_diversity
        self.was_diverse = self.was_diverse or not low
        # A freshly initialised G draws near-identical images: that is no collapse until samples have
        # once been diverse, or training is past its warm-up and they still are not.
        now = low and (self.was_diverse or step >= self.config.collapse_warmup)
        if now and not self.collapsed:
            self._warn(
                f"step {step}: mode collapse: the fixed-noise samples are nearly identical (diversity "
                f"{ratio:.3f} of the real images'); try a lower lr_g, loss = 'hinge' or an earlier checkpoint"
            )
        self.collapsed = now
        return ratio

    @property
    def warned(self) -> bool:
        """Whether a warning holds now (D overpowers G, or G collapsed): what early_stop stops on."""
        return self.overpowered or self.collapsed

    def _warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)


def progress_message(row: dict[str, Any]) -> str:
    """A metrics row in a few words, for the stage's on_progress callback."""
    parts = [f"step {row['step']}"]
    for key in ("loss_d", "loss_g", "images_per_second", "swd"):
        if key in row:
            parts.append(f"{key} {row[key]:.3g}")
    return ", ".join(parts)


def _tensorboard_writer(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    return SummaryWriter(str(log_dir))


class MetricsLog:
    """One JSON object per line; a resumed run first drops the rows past its checkpoint."""

    def __init__(self, path: Path, tensorboard_dir: Path | None) -> None:
        self.path = path
        self.tb = _tensorboard_writer(tensorboard_dir) if tensorboard_dir else None

    def truncate(self, step: int) -> None:
        """Keep the rows up to `step` (a killed run may have logged past its last checkpoint)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a kill
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:  # a row every log_every steps: reopening costs nothing
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
                    self.tb.add_scalar(key, value, row["step"])

    def image(self, tag: str, grid: torch.Tensor, step: int) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, grid, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
