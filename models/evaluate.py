"""What the main process measures of the averaged generator between steps: grids and SWD.

A grid is `grids/step-<n>.png`, 8x8 samples of fixed noise; their diversity against real images
feeds the collapse warning (models.watch). SWD (models.metrics.sliced_wasserstein) compares samples
of other fixed noise with a fixed real sample; the lowest SWD picks best.pt. Without models.metrics
there is no SWD, and best.pt is the latest checkpoint.
"""

from collections.abc import Callable
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.files import atomic_write_with
from models.config import TrainConfig
from models.data import fit_images, to_uint8
from models.watch import MetricsLog, Watch

GRID_SAMPLES = 64  # an 8x8 grid of the fixed noise
NO_SWD_NOTE = "models.metrics.sliced_wasserstein is not available: best.pt is the latest checkpoint"

Sampler = Callable[[torch.Tensor], torch.Tensor]  # latents -> images in [-1, 1]


def _swd_function() -> Callable[..., dict] | None:
    """models.metrics.sliced_wasserstein when that module is installed, else None."""
    if find_spec("models.metrics") is None:
        return None
    return getattr(import_module("models.metrics"), "sliced_wasserstein", None)


def real_sample(images: np.ndarray, config: TrainConfig) -> np.ndarray:
    """A fixed random sample of `eval_samples` dataset images at the trained size, in dataset order."""
    n = min(config.eval_samples, len(images))
    rows = np.sort(np.random.default_rng(config.seed).choice(len(images), n, replace=False))
    return fit_images(images[rows], config.image_size, config.channels).numpy()


class Evaluator:
    """Writes the grids and measures SWD of one run (main process only)."""

    def __init__(
        self,
        run_dir: Path,
        seed: int,
        real: np.ndarray,
        grid_noise: torch.Tensor,
        swd_noise: torch.Tensor,
        watch: Watch,
        metrics: MetricsLog,
    ) -> None:
        self.run_dir, self.seed, self.real = run_dir, seed, real  # real: (N, S, S, C) uint8
        self.grid_noise, self.swd_noise = grid_noise, swd_noise
        self.watch, self.metrics = watch, metrics
        self.swd_function = _swd_function()
        # The collapse warning's yardstick: a random sample of the real images (real is in dataset order,
        # and its first rows would be the earliest collected, often from one source).
        rows = np.random.default_rng(seed).permutation(len(real))[:GRID_SAMPLES]
        self.real_grid = torch.from_numpy(real[np.sort(rows)]).permute(0, 3, 1, 2).float() / 127.5 - 1

    def grid(self, step: int, sample: Sampler) -> dict[str, Any]:
        """Write the grid of `step`; the metrics row's `diversity` and `collapsed`."""
        from torchvision.utils import make_grid, save_image  # here: importing torchvision takes seconds

        fake = sample(self.grid_noise)
        grid = make_grid(fake, nrow=8, normalize=True, value_range=(-1, 1))
        atomic_write_with(
            self.run_dir / "grids" / f"step-{step}.png", lambda tmp: save_image(grid, tmp, format="png")
        )
        self.metrics.image("samples", grid, step)
        ratio = self.watch.samples(step, fake.cpu(), self.real_grid)
        return {"diversity": round(ratio, 4), "collapsed": self.watch.collapsed}

    def swd(self, sample: Sampler) -> dict[str, Any]:
        """The metrics row's `swd` (mean) and `swd_levels`; {} without models.metrics."""
        if self.swd_function is None:
            return {}
        result = self.swd_function(self.real, to_uint8(sample(self.swd_noise)), seed=self.seed)
        return {"swd": float(result["mean"]), "swd_levels": [float(v) for v in result["levels"]]}
