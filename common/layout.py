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

    @property
    def validate_store(self) -> Path:
        """Cached measurements, the quarantine and releases (validate.store owns its schema)."""
        return self.datasets_dir / "validate.sqlite"

    # train
    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run: str) -> Path:
        return self.runs_dir / run

    @property
    def latest_run(self) -> Path:
        """A symlink to the newest finished run."""
        return self.runs_dir / "latest"

    # export
    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    def export_dir(self, run: str) -> Path:
        return self.exports_dir / run

    # what each stage leaves behind when it has finished: when it is gone, a cached result is stale
    def main_output(self, stage: str, run: str | None = None) -> Path:
        """The file whose presence says `stage` has finished here (scrape: its manifest)."""
        if stage == "export":
            return self.export_dir(Path(run).name if run else self.latest_run.resolve().name) / "export.json"
        return {
            "scrape": self.raw_manifest,
            "preprocess": self.faces_manifest,
            "validate": self.latest_dataset / "images.npy",
            "train": self.latest_run / "run.json",
        }[stage]


def list_grids(run_dir: Path) -> list[tuple[int, Path]]:
    """A run's fixed-noise grids, `grids/step-<n>.png`, as (step, path) in step order."""
    found = ((p.stem.removeprefix("step-"), p) for p in (run_dir / "grids").glob("step-*.png"))
    return sorted((int(step), p) for step, p in found if step.isdigit())
