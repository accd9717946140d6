"""The data root: where each stage reads and writes (see docs/DESIGN.md, "Data root")."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataRoot:
    root: Path

    def __init__(self, root: str | Path = "data") -> None:
        object.__setattr__(self, "root", Path(root).expanduser().resolve())

    # scrape
    @property
    def raw_dir(self) -> Path:
        return self.root / "raw"

    @property
    def raw_manifest(self) -> Path:
        return self.raw_dir / "manifest.sqlite"

    def raw_path(self, sha256: str, ext: str) -> Path:
        return self.raw_dir / sha256[:2] / f"{sha256}.{ext}"

    # preprocess
    @property
    def faces_dir(self) -> Path:
        return self.root / "faces"

    @property
    def faces_manifest(self) -> Path:
        return self.faces_dir / "manifest.sqlite"

    def crop_path(self, sha256: str, face_index: int) -> Path:
        return self.faces_dir / f"{sha256}-{face_index}.png"

    # validate
    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def latest_dataset(self) -> Path:
        """A symlink to the newest snapshot folder."""
        return self.datasets_dir / "latest"

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.datasets_dir / dataset_id

    # train
    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run: str) -> Path:
        return self.runs_dir / run

    # export
    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    def export_dir(self, run: str) -> Path:
        return self.exports_dir / run
