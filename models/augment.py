"""Differentiable augmentation of everything D sees, for GANs trained on a few hundred or thousand images.

DiffAugment (Zhao et al. 2020): the same random transforms are applied to real and generated images
before D, in D's turn and in G's, and they are differentiable, so G learns through them and its own
images stay unaugmented. Three transforms, as in DiffAugment's code: `color` (brightness, saturation,
contrast), `translation` (shift by up to 1/8 of the side, zero padding) and `cutout` (a square of
half the side set to zero). Each applies to each image with probability `p`: fixed (`augment_p`),
or adaptive (`augment_target`), raised while D grows too sure of the real images and lowered when
it is not, as StyleGAN2-ADA does with its r_t = E[sign(D(real))] heuristic.

The random numbers are drawn outside the training step (`draw`) and passed in, and `p` and the r_t
tallies live in device tensors changed in place, so a step replayed as a CUDA graph sees new draws
and the current `p`. At p = 0 every transform is the identity, so none runs (`active`): adaptive
augmentation costs only its tally until D starts to overfit (a captured step is captured again when
that changes, models.cuda_graph).
"""

import torch

from models import ddp
from models.config import TrainConfig, parse_policy  # the policy names live with the settings

TRANSLATION_RATIO, CUTOUT_RATIO = 1 / 8, 1 / 2  # DiffAugment's defaults
# One row of uniforms per image and image set: for each transform one "apply?" draw, then its parameters.
_COLUMNS = {"color": slice(0, 4), "translation": slice(4, 7), "cutout": slice(7, 10)}
DRAWS = 10
SETS = 3  # the real batch, the fake batch in D's turn, the fake batch in G's turn


def _color(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Brightness +-0.5, saturation x0..2, contrast x0.5..1.5 (DiffAugment's ranges), when u[:, 0] < p."""
    y = x + (u[:, 1:2, None, None] - 0.5)
    mean = y.mean(dim=1, keepdim=True)
    y = (y - mean) * (u[:, 2:3, None, None] * 2) + mean
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * (u[:, 3:4, None, None] + 0.5) + mean
    return torch.where(u[:, :1, None, None].bool(), y, x)


def _translation(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Shift each image by whole pixels (up to 1/8 of the side each way), filling with zeros."""
    n, _, h, w = x.shape
    reach = max(1, int(h * TRANSLATION_RATIO + 0.5))
    shift = (u[:, 1:3] * (2 * reach + 1)).floor().long().clamp_(max=2 * reach) - reach
    shift = shift * u[:, :1].long()  # not applied: no shift
    rows = (torch.arange(h, device=x.device).view(1, h) + shift[:, :1] + reach).view(n, h, 1)
    cols = (torch.arange(w, device=x.device).view(1, w) + shift[:, 1:2] + reach).view(n, 1, w)
    padded = torch.nn.functional.pad(x, (reach, reach, reach, reach))
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Zero a square of half the side, centred anywhere in the image (it may hang over the edge)."""
    n, _, h, w = x.shape
    side_h, side_w = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    top = (u[:, 1:2] * (h + 1 - side_h % 2)).floor() - side_h // 2
    left = (u[:, 2:3] * (w + 1 - side_w % 2)).floor() - side_w // 2
    ys = torch.arange(h, device=x.device).view(1, h)
    xs = torch.arange(w, device=x.device).view(1, w)
    inside_rows = (ys >= top) & (ys < top + side_h)
    inside_cols = (xs >= left) & (xs < left + side_w)
    hole = inside_rows.view(n, h, 1) & inside_cols.view(n, 1, w) & u[:, :1].bool().view(n, 1, 1)
    return x * (~hole).unsqueeze(1).to(x.dtype)


_TRANSFORMS = {"color": _color, "translation": _translation, "cutout": _cutout}


class Augment:
    """The run's augmentation: its policy, its probability `p` (a device tensor) and the r_t tallies."""

    def __init__(self, config: "TrainConfig", device: torch.device) -> None:
        self.policy = parse_policy(config.augment)
        self.target = config.augment_target
        # ADA starts at p = 0 and lets the heuristic raise it; a fixed p is used as given.
        start = 0.0 if self.target is not None else config.augment_p
        self.p = torch.full((), start if self.policy else 0.0, device=device)
        self._p = float(self.p)  # the host's copy: p changes only in set_p
        self.speed = config.augment_speed  # images over which p may move by 1
        self.signs = torch.zeros(2, device=device)  # sum of sign(D(real)) and how many were summed

    @property
    def enabled(self) -> bool:
        return bool(self.policy)

    @property
    def active(self) -> bool:
        """Whether D sees transformed images now (not at p = 0, where each transform is the identity)."""
        return self.enabled and self._p > 0

    def set_p(self, value: float) -> None:
        self.p.fill_(value)
        self._p = value

    def draw(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """This step's uniforms, (SETS, batch, DRAWS); empty when augmentation is off (no draws taken)."""
        if not self.enabled:
            return torch.empty(0, device=self.p.device)
        return torch.rand(SETS, batch, DRAWS, device=self.p.device, generator=generator)

    def __call__(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """`x` through the policy's transforms with the uniforms `u` (batch, DRAWS); x itself when off
        or at p = 0."""
        if not self.active:
            return x
        for name in self.policy:
            column = u[:, _COLUMNS[name]]
            applied = (column[:, :1] < self.p).to(column.dtype)
            x = _TRANSFORMS[name](x, torch.cat([applied, column[:, 1:]], dim=1))
        return x

    def tally(self, real_logits: torch.Tensor, midpoint: float) -> None:
        """Add the signs of D's outputs on real images (in place: safe inside a CUDA graph)."""
        if self.target is not None:
            batch = real_logits.detach().float()
            self.signs[0] += torch.sign(batch - midpoint).sum()
            self.signs[1] += batch.numel()

    def adjust(self, sums: torch.Tensor) -> float | None:
        """Move p after `sums` (the tallies, summed over processes) and reset them; r_t, or None."""
        self.signs.zero_()
        if self.target is None or float(sums[1]) == 0:
            return None
        r_t = float(sums[0] / sums[1])
        step = float(sums[1]) / self.speed  # images judged since the last adjustment
        self.set_p(min(max(self._p + (step if r_t > self.target else -step), 0.0), 1.0))
        return r_t

    def figures(self, dist: ddp.Dist) -> dict[str, float]:
        """At a logged step: adapt p to the r_t since the last one; the metrics row's `augment_p`, `r_t`."""
        if not self.enabled:
            return {}
        r_t = self.adjust(ddp.mean(self.signs, dist) * dist.world_size)
        row = {"augment_p": round(self._p, 4)}
        return row if r_t is None else row | {"r_t": round(r_t, 4)}
