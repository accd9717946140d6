"""Settings of the validate stage: table `[validate]` in faces.toml."""

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from common.config import StrictModel
from common.files import config_hash


class ValidateConfig(StrictModel):
    """Dataset checks and snapshots. Table `[validate]` in faces.toml.

    Defaults were measured on 64x64 crops of the 204 studio portraits in shared/data/photos
    (docs/validate.md has the figures).
    """

    min_images: int = Field(16, ge=1, description="Fewer accepted crops than this stops the pipeline.")
    image_size: Literal[32, 64, 128] = Field(64, description="Every crop must be this size, RGB, uint8.")
    near_duplicate_distance: int = Field(
        2, ge=0, le=16, description="Perceptual-hash Hamming distance (of 64 bits) of a near-duplicate."
    )
    min_sharpness: float = Field(50.0, ge=0, description="Variance of the Laplacian below this is blurry.")
    min_brightness: float = Field(25.0, ge=0, le=255, description="Mean grey level below this is too dark.")
    max_brightness: float = Field(230.0, ge=0, le=255, description="Mean grey level above this: too bright.")
    min_contrast: float = Field(12.0, ge=0, description="Grey-level standard deviation below this is flat.")
    colour: bool = Field(True, description="The set is colour: grayscale crops are quarantined.")
    min_chroma: float = Field(
        4.0, ge=0, le=255, description="Mean (max - min) over RGB channels below this is grayscale."
    )
    recheck_faces: bool = Field(True, description="Re-run YuNet on each crop; no face found quarantines it.")
    min_face_score: float = Field(0.5, ge=0.1, le=1, description="YuNet score a re-checked face needs.")
    retention: int = Field(5, ge=1, description="Snapshots kept; older ones are deleted.")
    sheet_size: int = Field(64, ge=1, le=1024, description="Most crops on one contact sheet.")
    workers: int = Field(0, ge=0, description="Processes measuring crops; 0 means one per core.")

    # Settings that change how work is spread, not what it produces: left out of the input fingerprint.
    EXECUTION_FIELDS: ClassVar[frozenset[str]] = frozenset({"workers"})

    @model_validator(mode="after")
    def _brightness_range(self) -> "ValidateConfig":
        if self.min_brightness >= self.max_brightness:
            raise ValueError(
                f"min_brightness ({self.min_brightness}) must be below max_brightness ({self.max_brightness})"
            )
        return self

    def output_hash(self) -> str:
        """Hash of the settings that decide which crops are accepted."""
        return config_hash(self.model_dump(mode="json", exclude=set(self.EXECUTION_FIELDS)))
