"""The validate stage: check every crop, quarantine the doubtful ones, freeze the rest as a snapshot.

    crops, sources = validate.inputs          # what preprocess and scrape recorded
    measures       = validate.measure         # cached per crop file (validate.store)
    verdicts       = validate.judge           # hard checks raise BadInputError; soft ones quarantine
    quarantine     = validate.quarantine      # kept with reasons; a user can release a crop
    snapshot       = validate.snapshot        # accepted crops, in order of first collection

Accepted crops become datasets/<id>/ and datasets/latest; validate.summary says what happened.
"""

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from common.layout import DataRoot
from common.report import StageReport
from validate import snapshot
from validate.checks import MEASURE_VERSION, REASONS
from validate.config import ValidateConfig
from validate.inputs import Crop, Sources, as_root, read_crops, read_sources
from validate.judge import Verdict, fail_on_too_few, fail_on_unusable, judge
from validate.measure import measure_all
from validate.quarantine import write_quarantine
from validate.store import get_state, load_releases, open_store, set_state
from validate.summary import snapshot_report, stage_report, unchanged_report

Progress = Callable[[int, int, str], None]


def validate(
    config: ValidateConfig,
    root: DataRoot | str | Path,
    *,
    force: bool = False,
    on_progress: Progress | None = None,
) -> StageReport:
    start = time.monotonic()
    root = as_root(root)
    progress = on_progress or (lambda done, total, message: None)
    snapshot.clean_leftovers(root)
    crops = read_crops(root)
    sources = read_sources(root)
    with open_store(root) as store:
        releases = load_releases(store)
        fingerprint = fingerprint_of(config, crops, sources, releases)
        last_id = get_state(store, "dataset_id")
        unchanged = last_id and get_state(store, "fingerprint") == fingerprint
        if unchanged and not force and root.dataset_dir(last_id).is_dir():
            snapshot.point_latest(root, last_id)
            return unchanged_report(root, last_id, start)

        measures = measure_all(config, crops, store, progress)
        fail_on_unusable(config, crops, measures)
        verdicts = judge(config, crops, measures, sources, releases)
        write_quarantine(store, verdicts)
        accepted = [v for v in verdicts if not v.reasons]
        fail_on_too_few(config, verdicts, accepted)

        dataset_id = snapshot.snapshot_id([v.measures.pixels_sha256 for v in accepted], config.image_size)
        made = not root.dataset_dir(dataset_id).is_dir()  # the same accepted crops: nothing to write
        if made:
            progress(len(crops), len(crops), f"writing dataset {dataset_id}")
            write_snapshot(config, root, dataset_id, fingerprint, verdicts, sources)
        snapshot.point_latest(root, dataset_id)
        pruned = snapshot.prune(root, config.retention)
        set_state(store, fingerprint=fingerprint, dataset_id=dataset_id)

    return stage_report(config, root, dataset_id, verdicts, made, pruned, start)


def input_fingerprint(config: ValidateConfig, root: DataRoot | str | Path) -> str:
    """A hash of what validation reads: crop ids and file hashes, opt-outs, releases, the settings."""
    root = as_root(root)
    crops, sources = read_crops(root), read_sources(root)
    releases = {}
    if root.validate_store.is_file():
        with open_store(root) as store:
            releases = load_releases(store)
    return fingerprint_of(config, crops, sources, releases)


def fingerprint_of(config: ValidateConfig, crops: list[Crop], sources: Sources, releases: dict) -> str:
    h = hashlib.sha256(f"validate measures v{MEASURE_VERSION} {config.output_hash()}\n".encode())
    for c in crops:  # in validation order, which decides the duplicate kept
        blocked = "forgotten" if c.sha256 in sources.forgotten else sources.opted_out.get(c.sha256, "")
        h.update(f"{c.crop_id} {c.file_sha256} {blocked}\n".encode())
    for crop_id, crop_sha in sorted(releases.items()):
        h.update(f"release {crop_id} {crop_sha}\n".encode())
    return h.hexdigest()


def write_snapshot(
    config: ValidateConfig,
    root: DataRoot,
    dataset_id: str,
    fingerprint: str,
    verdicts: list[Verdict],
    sources: Sources,
) -> Path:
    accepted = [
        snapshot.Accepted(
            v.crop.crop_id,
            v.crop.sha256,
            v.crop.path,
            v.measures.pixels_sha256,
            sources.provenance.get(v.crop.sha256, snapshot.Provenance()),
        )
        for v in verdicts
        if not v.reasons
    ]
    report = snapshot_report(config, dataset_id, fingerprint, verdicts)
    return snapshot.build(root, dataset_id, accepted, report, rejected_by_reason(verdicts), config.sheet_size)


def rejected_by_reason(verdicts: list[Verdict]) -> dict[str, list[tuple[str, Path]]]:
    out: dict[str, list[tuple[str, Path]]] = {}
    for v in verdicts:
        for reason, _ in v.reasons:
            out.setdefault(reason, []).append((v.crop.crop_id, v.crop.path))
    return {r: out[r] for r in REASONS if r in out}
