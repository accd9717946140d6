from typing import Literal

from pydantic import Field

from common.config import StrictModel


class TrainConfig(StrictModel):
    """The GAN and how it trains. Table `[train]` in faces.toml. Defaults: the 64×64 DCGAN reference."""

    model: Literal["dcgan", "mlp"] = "dcgan"
    image_size: Literal[32, 64, 128] = 64
    channels: Literal[1, 3] = 3
    nz: int = Field(100, ge=1, description="Latent size.")
    ngf: int = Field(64, ge=1, description="Generator width.")
    ndf: int = Field(64, ge=1, description="Discriminator width.")
    loss: Literal["bce", "hinge", "lsgan"] = "bce"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    batch_size: int = Field(128, ge=1)
    steps: int = Field(5000, ge=1, description="Optimiser steps of each network.")
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    compile: bool = False
    seed: int = 0
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    sample_every: int = Field(500, ge=1)
    warm_start: bool = Field(True, description="Continue from the previous run when the dataset changed.")


class ExportConfig(StrictModel):
    """What export writes. Table `[export]` in faces.toml."""

    n_samples: int = Field(64, ge=1)
    seed: int = 0
    interpolation_steps: int = Field(10, ge=2)
