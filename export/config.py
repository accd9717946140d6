"""Settings of the export stage: table `[export]` in faces.toml."""

from pydantic import Field

from common.config import MAX_SEED, StrictModel


class ExportConfig(StrictModel):
    """What export writes and measures. Table `[export]` in faces.toml (docs/export.md)."""

    n_samples: int = Field(64, ge=1, description="Individual sample PNGs in exports/<run>/samples/.")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Fixes the grid's noise, the samples and every metric's randomness."
    )
    interpolation_steps: int = Field(10, ge=2, description="Images from one latent to the next.")
    eval_samples: int = Field(
        1024,
        ge=16,
        description="Generated images for SWD, against as many real ones (capped at half the dataset).",
    )
    diversity_samples: int = Field(64, ge=2, description="Images whose pairwise MS-SSIM gives the diversity.")
    memorisation_samples: int = Field(
        16, ge=1, description="Samples shown beside their nearest training crop."
    )
    onnx: bool = Field(True, description="Also write generator.onnx when the onnx package is installed.")
    inception_weights: str | None = Field(
        None,
        description="Local FID Inception weights: adds FID and KID (needs torchmetrics, torch-fidelity).",
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N.")
