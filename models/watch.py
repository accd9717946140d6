"""Watching a training run: warnings when D overpowers G or G collapses, and the metrics log.

`Watch` turns logged losses and fixed-noise samples into warnings (logged once per episode, kept
for the report). `MetricsLog` appends one JSON object per row to metrics.jsonl and mirrors the
numbers and grids to TensorBoard when the `tensorboard` package is installed.
"""

import json
import logging
import math
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from common.files import atomic_write_text
from models.config import TrainConfig

log = logging.getLogger("models.train")


MEASURE_SIDE = 32  # larger images are area-averaged to this side before their distances are taken


def structured_distances(images: torch.Tensor) -> torch.Tensor:
    """Squared distances between all pairs of images that count only spatially coherent differences.

    For a pair's difference image d, the mean of d(p) * d(p + one pixel), right and down, instead of
    d(p)^2: independent per-pixel noise averages out of it, while a difference in what the images show
    (spread over neighbouring pixels) does not. Computed for all pairs at once from inner products.
    """
    x = images.float()
    if x.shape[-1] > MEASURE_SIDE:
        x = F.adaptive_avg_pool2d(x, MEASURE_SIDE)
    left, right = x[..., :, :-1].flatten(1), x[..., :, 1:].flatten(1)
    top, below = x[..., :-1, :].flatten(1), x[..., 1:, :].flatten(1)
    cross = (left @ right.T + top @ below.T) / (2 * left.shape[1])  # <image i, image j moved one pixel>
    own = cross.diagonal()
    return own[:, None] + own[None, :] - cross - cross.T


def diversity(images: torch.Tensor) -> float:
    """How far each image is from its nearest other image (median over images), noise excluded.

    Near zero when the images come in copies of a few pictures, whatever noise sits on top of them.
    """
    pairs = structured_distances(images)
    pairs.fill_diagonal_(math.inf)
    return float(pairs.min(dim=1).values.clamp_min(0).median().sqrt())


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


class Watch:
    """Raises a warning (once per episode) when D wins outright or G's samples collapse."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.losses_d: deque[float] = deque(maxlen=config.watch_window)
        self.overpowered = False
        self.collapsed = False
        self.was_diverse = False
        self.warnings: list[str] = []

    def losses(self, step: int, loss_d: float, d_g_z: float) -> bool:
        """D overpowers G when its loss, as the median of the last `watch_window` rows, is near zero.

        The median lets no single noisy row veto (or raise) the warning; once raised, it holds until the
        median is twice the threshold, so a run hovering at the threshold warns once.
        """
        self.losses_d.append(loss_d)
        typical = median(self.losses_d)
        limit = self.config.overpower_d_loss * (2 if self.overpowered else 1)
        now = len(self.losses_d) == self.losses_d.maxlen and typical < limit
        if now and not self.overpowered:
            self._warn(
                f"step {step}: the discriminator overpowers the generator (median D loss {typical:.3g} < "
                f"{self.config.overpower_d_loss} over the last {len(self.losses_d)} logged rows; "
                f"D(G(z)) now {d_g_z:.3g}); try augment = 'color,translation,cutout', "
                "label_smoothing = 0.1, a lower lr_d or loss = 'hinge'"
            )
        self.overpowered = now
        return now

    def samples(self, step: int, fake: torch.Tensor, real: torch.Tensor) -> float:
        """Diversity of the fixed-noise samples relative to real images; warns when they collapse."""
        ratio = diversity(fake) / max(diversity(real), 1e-8)
        low = ratio < self.config.collapse_diversity
        # A freshly initialised G draws near-identical images: that is no collapse until samples have
        # once been clearly diverse (twice the threshold: a young run hovers about it), or training is
        # past its warm-up and they still are not.
        self.was_diverse = self.was_diverse or ratio >= 2 * self.config.collapse_diversity
        now = low and (self.was_diverse or step >= self.config.collapse_warmup)
        if now and not self.collapsed:
            self._warn(
                f"step {step}: mode collapse: the fixed-noise samples are near copies of each other "
                f"(diversity {ratio:.3f} of the real images'); try augment = 'color,translation,cutout', "
                "a lower lr_g, loss = 'hinge' or an earlier checkpoint"
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


def progress_message(row: dict[str, Any], until: int) -> str:
    """A metrics row in a few words, for the stage's on_progress callback and the evaluation log line."""
    parts = [f"step {row['step']} of {until}"]
    for key in ("loss_d", "loss_g", "images_per_second", "augment_p", "swd"):
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
