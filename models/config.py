from typing import Literal

from pydantic import Field, field_validator

from common.config import MAX_SEED, StrictModel

# DiffAugment's transforms (models/augment.py); named here so reading a config never imports torch.
POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    """'color,translation' -> ('color', 'translation'); '' -> (); an unknown name is a ValueError."""
    names = tuple(name.strip() for name in policy.split(",") if name.strip())
    unknown = [name for name in names if name not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}: use a comma-separated list of {POLICIES}")
    return names


class TrainConfig(StrictModel):
    """The GAN and how it trains. Table `[train]` in faces.toml. Defaults: the 64×64 DCGAN reference."""

    # What is learned: these (with the dataset) name the run, see models.runs.run_name.
    model: Literal["dcgan", "mlp"] = "dcgan"
    image_size: Literal[32, 64, 128] = 64
    channels: Literal[1, 3] = 3
    nz: int = Field(100, ge=1, description="Latent size.")
    ngf: int = Field(64, ge=1, description="Generator width.")
    ndf: int = Field(64, ge=1, description="Discriminator width.")
    loss: Literal["bce", "hinge", "lsgan"] = "bce"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    batch_size: int = Field(128, ge=1, description="Global batch: split across processes under torchrun.")
    steps: int = Field(5000, ge=1, description="Optimiser steps of each network.")
    # 1e-3 rather than DCGAN's 2e-4: measured best of 2e-4..1e-3 on small sets (docs/training.md).
    lr_g: float = Field(1e-3, gt=0)
    lr_d: float = Field(1e-3, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    flip: bool = Field(True, description="Random horizontal flips of the real images.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Fixes the initial weights, noise and data order.")
    augment: str = Field(
        "color,translation,cutout",
        description="DiffAugment policy: transforms applied to real and generated images before D "
        "(comma-separated: color, translation, cutout); empty for none.",
    )
    augment_p: float = Field(1.0, ge=0, le=1, description="Probability of each transform per image.")
    augment_target: float | None = Field(
        0.6,
        ge=0,
        le=1,
        description="Adaptive augmentation (ADA): p starts at 0 and moves so that the mean sign of D's "
        "outputs on real images stays near this target (0.6 in StyleGAN2-ADA); 0 (none): p is augment_p.",
    )
    augment_speed: int = Field(100_000, ge=1, description="Images over which adaptive p can move by 1.")
    spectral_norm: bool = Field(False, description="Spectral norm on D's layers (instead of batch norm).")
    warm_start: bool = Field(True, description="Continue from the previous run when the dataset changed.")

    @field_validator("augment")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        return ",".join(parse_policy(value))

    @field_validator("augment_target")
    @classmethod
    def _zero_is_fixed(cls, value: float | None) -> float | None:
        return value or None  # TOML has no null: `augment_target = 0` turns adaptation off

    # How it runs: the CUDA speed-ups are used only on a CUDA device.
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on CUDA (fp16 + loss scaling if unsupported), fp32 on CPU."
    )
    channels_last: bool = Field(True, description="NHWC memory layout on CUDA (faster convolutions).")
    compile: bool = Field(False, description="torch.compile the networks (CUDA only).")
    cuda_graphs: bool = Field(
        True,
        description="Replay each training step as one CUDA graph (one GPU, bf16 or fp32): "
        "small GANs spend most of a step launching kernels, and a replay launches them all at once.",
    )
    sync_batchnorm: bool = Field(True, description="SyncBatchNorm across processes (CUDA only).")
    cpu_threads: int = Field(
        0,
        ge=0,
        description="CPU threads (0: PyTorch's default, one per core; 1 is fastest on a busy machine).",
    )

    # How it is watched and stored.
    log_every: int = Field(50, ge=1, description="Steps between metrics.jsonl rows.")
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    keep_runs: int = Field(
        5,
        ge=0,
        description="Finished runs kept under runs/, the newest; older ones go once exported "
        "(never runs/latest's, or one in use); 0 keeps all.",
    )
    sample_every: int = Field(500, ge=1, description="Steps between fixed-noise grids.")
    eval_every: int = Field(1000, ge=1, description="Steps between SWD evaluations (best.pt is the lowest).")
    eval_samples: int = Field(1024, ge=16, description="Images per SWD evaluation (capped at the dataset).")
    watch_window: int = Field(10, ge=2, description="Logged rows whose median D loss is watched.")
    overpower_d_loss: float = Field(0.05, ge=0, description="Median D loss below this: warning.")
    collapse_diversity: float = Field(
        0.15,
        ge=0,
        lt=1,
        description="Fixed-noise samples nearer copies of each other than this fraction of real ones' "
        "distance (models.watch.diversity): warning.",
    )
    collapse_warmup: int = Field(
        500,
        ge=0,
        description="Steps before never-diverse samples count as collapsed (a fresh G's are alike).",
    )
    early_stop: bool = Field(False, description="Stop (keeping the checkpoints) on a collapse warning.")
    tensorboard: bool = Field(True, description="Also log to TensorBoard when it is installed.")
    progress_bar: bool = Field(True, description="A console progress bar, when stderr is a terminal.")
