"""The data root: where each stage reads and writes (see docs/DESIGN.md, "Data root")."""

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class DataRoot:
    """Every path under one data root. Roots compare by `root` alone: the rest follows from it."""

    root: Path
    # set in __init__, from root; not compared (equal roots have equal paths)
    raw_dir: Path = field(init=False, compare=False, repr=False)
    raw_manifest: Path = field(init=False, compare=False, repr=False)
    faces_dir: Path = field(init=False, compare=False, repr=False)
    faces_manifest: Path = field(init=False, compare=False, repr=False)
    datasets_dir: Path = field(init=False, compare=False, repr=False)
    latest_dataset: Path = field(init=False, compare=False, repr=False)
    validate_store: Path = field(init=False, compare=False, repr=False)
    runs_dir: Path = field(init=False, compare=False, repr=False)
    latest_run: Path = field(init=False, compare=False, repr=False)
    exports_dir: Path = field(init=False, compare=False, repr=False)

    def __init__(self, root: str | Path = "data") -> None:
        root = Path(root).expanduser().resolve()
        paths = {
            "root": root,
            # scrape
            "raw_dir": root / "raw",
            "raw_manifest": root / "raw" / "manifest.sqlite",
            # preprocess
            "faces_dir": root / "faces",
            "faces_manifest": root / "faces" / "manifest.sqlite",
            # validate: snapshots, `latest` (a symlink to the newest), and the store of cached
            # measurements, quarantine and releases (validate.store owns its schema)
            "datasets_dir": root / "datasets",
            "latest_dataset": root / "datasets" / "latest",
            "validate_store": root / "datasets" / "validate.sqlite",
            # train: runs, and `latest`, a symlink to the newest finished run
            "runs_dir": root / "runs",
            "latest_run": root / "runs" / "latest",
            # export
            "exports_dir": root / "exports",
        }
        for name, path in paths.items():
            object.__setattr__(self, name, path)

    def raw_path(self, sha256: str, ext: str) -> Path:
        return self.raw_dir / sha256[:2] / f"{sha256}.{ext}"

    def crop_path(self, sha256: str, face_index: int) -> Path:
        return self.faces_dir / f"{sha256}-{face_index}.png"

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.datasets_dir / dataset_id

    def run_dir(self, run: str) -> Path:
        return self.runs_dir / run

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
