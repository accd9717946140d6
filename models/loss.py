"""The GAN losses on D's logits, and their backward passes as the training step takes them.

"Real" and "fake" parts are separate functions because D sees them in separate forwards (batch norm
sees one kind of batch at a time, as in DCGAN). The `loss` setting picks the formulation:
`bce` (non-saturating), `hinge` or `lsgan` (docs/training.md, "The loop"). `GANLoss` runs the
forwards and backwards of each network's turn, as stylegan2-ada's loss.py does; the trainer zeroes
the gradients and steps the optimisers around them.
"""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from models import ddp
from models.augment import Augment


def real_loss(kind: str, logits: torch.Tensor, smoothing: float) -> torch.Tensor:
    """D's loss on real images; `smoothing` lowers the real target (one-sided label smoothing)."""
    target = 1.0 - smoothing
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))
    if kind == "hinge":
        return F.relu(1 - logits).mean()
    return 0.5 * (logits - target).pow(2).mean()


def fake_loss(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """D's loss on generated images."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    if kind == "hinge":
        return F.relu(1 + logits).mean()
    return 0.5 * logits.pow(2).mean()


def generator_loss(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """G's loss on D's logits for its images."""
    if kind == "bce":  # non-saturating: maximise log D(G(z))
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    if kind == "hinge":
        return -logits.mean()
    return 0.5 * (logits - 1).pow(2).mean()


def logit_midpoint(kind: str) -> float:
    """The D output halfway between its real and fake targets: what the sign of D(x) is taken against."""
    return 0.5 if kind == "lsgan" else 0.0


def discriminator_score(kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """How D's logits are logged as D(x): a probability for BCE, the raw logit otherwise."""
    return torch.sigmoid if kind == "bce" else (lambda t: t)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """The module's weights need no gradients inside the block (gradients still flow through it)."""
    module.requires_grad_(False)
    try:
        yield
    finally:
        module.requires_grad_(True)


def grad_norm(module: nn.Module) -> torch.Tensor:
    """The L2 norm of all of the module's gradients together (zero when it has none)."""
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return torch.stack(norms).norm() if norms else torch.zeros(())


class GANLoss:
    """The backward passes of D's and G's turns; gradients are scaled by `scaler` (fp16).

    D sees every image through `augment` (models.augment), with this step's uniforms `draws`: one set
    for the real batch, one for the fake batch in D's turn, one for G's turn.
    """

    def __init__(
        self,
        d: nn.Module,
        d_raw: nn.Module,
        kind: str,
        smoothing: float,
        scaler: torch.amp.GradScaler,
        autocast: Callable[[], AbstractContextManager],
        augment: Augment,
    ) -> None:
        self.d, self.d_raw = d, d_raw  # D as the step calls it (DDP, compiled), and its plain module
        self.kind, self.smoothing = kind, smoothing
        self.scaler, self.autocast = scaler, autocast
        self.augment = augment

    def _seen(self, images: torch.Tensor, draws: torch.Tensor, which: int) -> torch.Tensor:
        """The images as D sees them: augmented with the `which`-th set of draws, when augmenting."""
        return self.augment(images, draws[which]) if self.augment.active else images

    def discriminator(
        self, real: torch.Tensor, fake: torch.Tensor, draws: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Backward of D's loss on `real` and `fake`; the loss and D's logits for each (detached)."""
        # Separate forwards; their gradients add up locally and are all-reduced once, by the second backward.
        with ddp.no_sync(self.d):
            with self.autocast():
                real_logits = self.d(self._seen(real, draws, 0)).float()
            loss_real = real_loss(self.kind, real_logits, self.smoothing)
            self.scaler.scale(loss_real).backward()
        self.augment.tally(real_logits, logit_midpoint(self.kind))
        with self.autocast():
            fake_logits = self.d(self._seen(fake.detach(), draws, 1)).float()
        loss_fake = fake_loss(self.kind, fake_logits)
        self.scaler.scale(loss_fake).backward()
        return (loss_real + loss_fake).detach(), real_logits.detach(), fake_logits.detach()

    def generator(self, fake: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Backward of G's loss through D held fixed; the loss (detached).

        D's weights get no gradients (saving part of its backward work) and DDP has nothing of D's
        to all-reduce.
        """
        with frozen(self.d_raw), ddp.no_sync(self.d):
            with self.autocast():
                logits = self.d(self._seen(fake, draws, 2)).float()
            loss = generator_loss(self.kind, logits)
            self.scaler.scale(loss).backward()
        return loss.detach()
