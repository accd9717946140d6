"""DCGAN (Radford et al. 2015) and the seed experiments' MLP GAN.

Generator: latent z -> transposed convolutions with batch norm and ReLU -> tanh image in [-1, 1].
Discriminator: strided convolutions with LeakyReLU (batch norm after the first) -> one logit.
The discriminator returns logits, not probabilities, so the losses stay safe under autocast.
Image sizes 32, 64 and 128 add or remove one up/down-sampling block around the 4x4 core.
With `spectral_norm` (SN-GAN, Miyato et al. 2018) D's layers are spectrally normalised and D has no
batch norm: its Lipschitz bound then holds whatever batch it sees.
"""

import math

import torch
from torch import nn

from models.config import TrainConfig


def _blocks(image_size: int) -> int:
    """How many stride-2 blocks take 4x4 to image_size (64 -> 4: 4, 8, 16, 32, 64)."""
    n = int(math.log2(image_size // 4))
    if 4 * 2**n != image_size:
        raise ValueError(f"image_size must be 4 times a power of two, got {image_size}")
    return n


class Generator(nn.Module):
    def __init__(self, nz: int = 100, ngf: int = 64, channels: int = 3, image_size: int = 64) -> None:
        super().__init__()
        n = _blocks(image_size)
        width = ngf * 2 ** (n - 1)  # 512 for the 64x64 reference
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, width, 4, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(n - 1):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.nz = nz
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.nz, 1, 1))


class Discriminator(nn.Module):
    def __init__(self, ndf: int = 64, channels: int = 3, image_size: int = 64, norm: bool = True) -> None:
        super().__init__()
        n = _blocks(image_size)
        layers: list[nn.Module] = [nn.Conv2d(channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        width = ndf
        for _ in range(n - 1):
            layers += [
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width * 2) if norm else nn.Identity(),
                nn.LeakyReLU(0.2, True),
            ]
            width *= 2
        layers.append(nn.Conv2d(width, 1, 4, 1, 0, bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


class MLPGenerator(nn.Module):
    """The seed experiments' vanilla GAN: fully connected, LeakyReLU, batch norm, Gaussian latent."""

    def __init__(self, nz: int = 100, hidden: int = 256, channels: int = 3, image_size: int = 64) -> None:
        super().__init__()
        self.shape = (channels, image_size, image_size)
        self.nz = nz
        self.net = nn.Sequential(
            nn.Linear(nz, hidden),
            nn.LeakyReLU(0.2, True),
            nn.Linear(hidden, hidden * 2),
            nn.BatchNorm1d(hidden * 2),
            nn.LeakyReLU(0.2, True),
            nn.Linear(hidden * 2, hidden * 4),
            nn.BatchNorm1d(hidden * 4),
            nn.LeakyReLU(0.2, True),
            nn.Linear(hidden * 4, math.prod(self.shape)),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.nz)).view(-1, *self.shape)


class MLPDiscriminator(nn.Module):
    def __init__(self, hidden: int = 256, channels: int = 3, image_size: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * image_size * image_size, hidden * 4),
            nn.LeakyReLU(0.2, True),
            nn.Linear(hidden * 4, hidden * 2),
            nn.LeakyReLU(0.2, True),
            nn.Linear(hidden * 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


def init_weights(m: nn.Module) -> None:
    """DCGAN's initialisation: conv and linear weights from N(0, 0.02), batch-norm scales from N(1, 0.02)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def build_generator(cfg: TrainConfig) -> nn.Module:
    if cfg.model == "mlp":
        g = MLPGenerator(cfg.nz, cfg.ngf * 4, cfg.channels, cfg.image_size)
    else:
        g = Generator(cfg.nz, cfg.ngf, cfg.channels, cfg.image_size)
    g.apply(init_weights)
    return g


def build_discriminator(cfg: TrainConfig) -> nn.Module:
    if cfg.model == "mlp":
        d = MLPDiscriminator(cfg.ndf * 4, cfg.channels, cfg.image_size)
    else:
        d = Discriminator(cfg.ndf, cfg.channels, cfg.image_size, norm=not cfg.spectral_norm)
    d.apply(init_weights)
    if cfg.spectral_norm:
        for layer in list(d.modules()):
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.utils.parametrizations.spectral_norm(layer)
    return d
