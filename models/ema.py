"""The exponential moving average of G's weights: what grids, evaluation and export sample.

The averaged generator is sampled in eval mode. G's batch-norm running averages describe G's recent
weights, not the averaged ones, and early in training they still hold their initial values, which
makes every sample the same grey image. So its statistics are measured afresh on the averaged
weights ("standing statistics", BigGAN) before it is sampled or saved.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager
from copy import deepcopy

import torch
from torch import nn

STATS_SAMPLES, STATS_BATCH = 512, 128  # noise that measures the averaged generator's batch-norm statistics


class AveragedGenerator:
    """A copy of `generator` whose weights follow it as an exponential moving average."""

    def __init__(
        self,
        generator: nn.Module,
        decay: float,
        stats_noise: torch.Tensor,
        autocast: Callable[[], AbstractContextManager],
    ) -> None:
        self.net = deepcopy(generator).requires_grad_(False).eval()
        self.decay = decay
        self._pairs = (list(self.net.parameters()), list(generator.parameters()))
        self._stats_noise = stats_noise  # fixed, so the statistics depend only on the weights
        self._autocast = autocast
        self._stats_step = -1  # the step the statistics were measured at

    @torch.no_grad()
    def update(self, step: int) -> None:
        # Warm-up: the average follows closely at first, so early samples are not dominated by init.
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self._pairs[0], self._pairs[1], 1 - decay)

    @torch.no_grad()
    def refresh_statistics(self, step: int) -> None:
        """Batch-norm statistics of the averaged weights: a plain mean over a few batches of fixed noise."""
        if self._stats_step == step:
            return
        norms = [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        self.net.train()
        with self._autocast():
            for z in self._stats_noise.split(STATS_BATCH):
                self.net(z)
        self.net.eval()
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        self._stats_step = step

    @torch.no_grad()
    def sample(self, z: torch.Tensor, step: int, batch: int = 256) -> torch.Tensor:
        """Images for latents `z` (eval mode), as float in [-1, 1]."""
        self.refresh_statistics(step)
        with self._autocast():
            return torch.cat([self.net(z[i : i + batch]).float() for i in range(0, len(z), batch)])

    def state_dict(self, step: int) -> dict[str, torch.Tensor]:
        """The averaged weights with statistics measured at `step` (what a checkpoint saves)."""
        self.refresh_statistics(step)
        return self.net.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state)
        self._stats_step = -1
