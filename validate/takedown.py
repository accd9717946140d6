"""Takedown: `faces forget <image URL | page URL | sha256>`.

Afterwards no byte of the image, none of its pixels, nor its hash or URLs are left under the data root
except the record of its URLs and hash in raw/manifest.sqlite `forgotten` (which the crawler checks, so
it is never fetched again):
- exports whose memorisation.png showed one of its crops lose that picture and are marked for re-export
  (export.redaction); trained runs cannot forget one face, so those that learnt from it, and the runs
  warm-started from them, are marked and named (models.taken_down): none is a warm start again;
- every snapshot whose images hold one of its crops is deleted whole. A snapshot is frozen and named
  by its content, so rewriting it without the crop would make it a different dataset under the old
  name; a new snapshot is built instead, from what is left;
- a snapshot that shows it only on a rejected contact sheet (its dataset never held it) is redacted:
  the tile is painted white and the crop is dropped from report.json, report.md and the card;
- its raw file and crops are deleted, and its rows in both manifests (the crawler's frontier and pages
  included) and in validation's state. SQLite's secure_delete zeroes the space the rows leave, and each
  database is then rebuilt (VACUUM), so no older deleted copy lingers in free pages either.

The order makes a killed takedown safe to run again: the forgotten record first, the exports while the
snapshots still say which crops they show, then the files, and the rows that map the URL to the image last.
The report names every file and folder deleted or rewritten.
"""

import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from common.clock import now_iso
from common.files import sha256_file
from common.layout import DataRoot
from common.report import BadInputError, StageReport
from models.taken_down import DESCENDANT, SNAPSHOT_GONE, TRAINED_ON, mark_runs
from preprocess import manifest as faces_manifest
from scraper import manifest as raw_manifest
from validate.config import ValidateConfig
from validate.inputs import as_root
from validate.purge import purge_exports, purge_snapshots, snapshots_holding
from validate.stage import validate
from validate.store import connect, delete_crops

SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Target:
    key: str
    shas: set[str] = field(default_factory=set)  # source images to remove
    # every URL that served one of them, or the page's URLs -> the hash it served (None: nothing stored)
    urls: dict[str, str | None] = field(default_factory=dict)
    crop_ids: set[str] = field(default_factory=set)
    crop_files: set[Path] = field(default_factory=set)


def forget(key: str, root: DataRoot | str | Path, validate_config: ValidateConfig) -> StageReport:
    """Take down every image `key` names, everywhere under the data root (see the module docstring)."""
    start = time.monotonic()
    root = as_root(root)
    key = normalise_key(key)
    target = resolve(root, key)
    record_forgotten(root, target)
    if not target.shas:
        notes = [f"nothing stored matches {key}; it is recorded, so the crawler will never fetch it"]
        notes += database_notes(root, remove_rows(root, target, set()), key)
        return StageReport(
            stage="forget", counts={"images": 0}, notes=notes, seconds=time.monotonic() - start
        )

    exports = purge_exports(root, target.shas)  # first: the snapshots still say which crops each one shows
    holding = snapshots_holding(root, target.shas)  # read once: the runs are marked before they go
    runs = mark_runs(root, now_iso(), {p.name for p in holding}, first_stored(root, target))
    snapshots, redacted = purge_snapshots(root, target.shas, target.crop_ids, holding)
    crop_hashes = {sha256_file(p) for p in target.crop_files if p.is_file()}
    files = remove_files(root, target)
    databases = remove_rows(root, target, crop_hashes)
    notes = change_notes(root, files, snapshots, redacted, exports) + database_notes(root, databases, key)
    notes += runs_notes(root, runs)
    outputs, rebuilt = rebuild_dataset(root, validate_config)
    return StageReport(
        stage="forget",
        counts={
            "images": len(target.shas),
            "urls": len(target.urls),
            "files removed": len(files),
            "crops removed": len(target.crop_ids),
            "snapshots removed": sum(not p.name.startswith(".") for p in snapshots),  # not half-built ones
            "snapshots redacted": len(redacted),
            "exports redacted": sum(p.name == "export.json" for p in exports[1]),
        },
        outputs=outputs,
        notes=notes + rebuilt,
        seconds=time.monotonic() - start,
    )


def normalise_key(key: str) -> str:
    key = key.strip()
    if SHA256.fullmatch(key.lower()):
        return key.lower()
    if key.startswith(("http://", "https://")):
        return key
    raise BadInputError(
        f"faces forget {key!r}: not an http(s) URL or a sha256 (64 hex digits); pass the image URL, the page "
        "URL it was found on, or its sha256 (the `sha256` column of a dataset's index.csv)"
    )


# --- finding --------------------------------------------------------------------------------------------


def resolve(root: DataRoot, key: str) -> Target:
    """Every image the key names, every URL that served one of them, and their crops."""
    target = Target(key)
    if SHA256.fullmatch(key):
        target.shas.add(key)
    target.urls = raw_manifest.urls_found_at(root.raw_manifest, key)
    for url in raw_manifest.images_listed_on(root.raw_manifest, key):  # found on the page, fetched or not
        target.urls |= raw_manifest.urls_found_at(root.raw_manifest, url) or {url: None}
    target.shas |= {sha for sha in target.urls.values() if sha}
    # a takedown killed after its rows went: its record still names the hashes, so finish it
    target.shas |= raw_manifest.forgotten_hashes(root.raw_manifest, key)
    target.urls |= raw_manifest.urls_serving(root.raw_manifest, target.shas)
    for crop_id, path in faces_manifest.crops_of_sources(root.faces_manifest, target.shas):
        target.crop_ids.add(crop_id)
        target.crop_files.add(root.root / path)
    for sha in target.shas:  # crops on disk that no row names (a run killed mid-write)
        for path in root.faces_dir.glob(f"{sha}-*.png"):
            target.crop_ids.add(path.stem)
            target.crop_files.add(path)
    return target


def record_forgotten(root: DataRoot, target: Target) -> None:
    """The record that outlives the image: the key, every URL and every hash, in one transaction."""
    at = now_iso()
    only = next(iter(target.shas)) if len(target.shas) == 1 else None
    rows = [(target.key, only, at)]
    rows += [(url, sha if sha in target.shas else None, at) for url, sha in sorted(target.urls.items())]
    rows += [(sha, sha, at) for sha in sorted(target.shas)]
    raw_manifest.record_forgotten(root.raw_manifest, rows)


# --- files and rows -----------------------------------------------------------------------------------------


def remove_files(root: DataRoot, target: Target) -> list[Path]:
    """The original and its crops (and atomic-write leftovers of either); returns the files deleted."""
    paths = set(target.crop_files)
    for sha in target.shas:
        folder = root.raw_dir / sha[:2]
        paths |= set(folder.glob(f"{sha}.*")) | set(folder.glob(f".{sha}.*"))
        paths |= set(root.faces_dir.glob(f".{sha}-*"))
    removed = sorted(p for p in paths if p.is_file())
    for p in removed:
        p.unlink()
    return removed


def remove_rows(root: DataRoot, target: Target, crop_hashes: set[str]) -> dict[Path, bool]:
    """Each database's rows of the image, each owner's SQL; the raw manifest's last: they map the URL
    to the image. Returns each database changed and whether it was rebuilt (`erase`)."""
    urls = set(target.urls) | ({target.key} if target.key.startswith("http") else set())

    def raw_rows(con: sqlite3.Connection) -> None:
        raw_manifest.delete_images(con, target.shas, target.urls)
        raw_manifest.delete_crawled(con, urls)  # the frontier, and the pages that list them

    steps: list[tuple[Path, Callable[[sqlite3.Connection], None]]] = [
        (root.validate_store, lambda con: delete_crops(con, crop_hashes, target.shas, target.crop_ids)),
        (root.faces_manifest, lambda con: faces_manifest.delete_sources(con, target.shas)),
    ]
    steps = (steps if target.shas else []) + [(root.raw_manifest, raw_rows)]
    return {db: erase(db, delete) for db, delete in steps if db.is_file()}


def erase(db: Path, delete: Callable[[sqlite3.Connection], None]) -> bool:
    """`delete` in one transaction whose deletions zero the space they free, then the file rebuilt
    (VACUUM: rows deleted earlier, by the crawler say, linger in free pages otherwise) and its
    write-ahead log truncated. False when another process held it, so it could not be rebuilt."""
    with connect(db, secure_delete=True) as con:
        with con:
            delete(con)
        try:
            con.execute("VACUUM")
            busy = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.OperationalError:  # still locked after the busy timeout
            return False
    return not busy


# --- what is left, and the report ------------------------------------------------------------------------


def rebuild_dataset(root: DataRoot, validate_config: ValidateConfig) -> tuple[dict[str, str], list[str]]:
    """A new snapshot from what is left, pointed at by `latest`: (its outputs, notes)."""
    try:
        report = validate(validate_config, root)
    except BadInputError as e:
        if root.latest_dataset.is_symlink() and not root.latest_dataset.exists():
            root.latest_dataset.unlink()  # it pointed at a deleted snapshot
        return {}, [f"no new snapshot could be built from what is left: {e}"]
    outputs = {k: v for k, v in report.outputs.items() if k in ("dataset", "report", "card")}
    return outputs, report.notes


def names(root: DataRoot, paths: Iterable[Path]) -> str:
    """Paths relative to the data root, comma-separated."""
    return ", ".join(str(p.relative_to(root.root)) for p in paths)


def change_notes(
    root: DataRoot,
    files: list[Path],
    snapshots: list[Path],
    redacted: dict[Path, list[Path]],
    exports: tuple[list[Path], list[Path]],
) -> list[str]:
    """Every file and folder deleted or rewritten, by what it was."""
    notes = [f"deleted, the image and its crops: {names(root, files)}"] if files else []
    if snapshots:
        notes.append(f"snapshots that contained it, deleted: {names(root, snapshots)}")
    else:
        notes.append("no snapshot contained it")
    for folder, rewritten in redacted.items():
        notes.append(f"{names(root, [folder])} showed it as rejected, redacted: {names(root, rewritten)}")
    deleted, marked = exports
    if deleted:
        notes.append(
            f"exports that showed it (or whose snapshot is gone, so that cannot be told), deleted: "
            f"{names(root, deleted)}; marked for re-export: {names(root, marked)} (`faces export --run "
            "<run>` draws memorisation.png again from the crops left)"
        )
    return notes


def database_notes(root: DataRoot, databases: dict[Path, bool], key: str) -> list[str]:
    rebuilt = [db for db, done in databases.items() if done]
    busy = [db for db, done in databases.items() if not done]
    notes = [f"rows deleted and databases rebuilt: {names(root, rebuilt)}"] if rebuilt else []
    if busy:
        notes.append(
            "rows deleted (their space zeroed), but another process kept these busy, so they were not "
            "rebuilt or their write-ahead log not truncated: "
            f"{names(root, busy)}; older deleted rows may linger in their free pages: run `faces forget "
            f"{key}` again when nothing else uses them"
        )
    return notes


def runs_notes(root: DataRoot, runs: dict[str, list[str]]) -> list[str]:
    """The runs that learnt from the image, as `mark_runs` marked them: none is a warm start again."""
    said = {
        TRAINED_ON: "runs trained on a deleted snapshot",
        SNAPSHOT_GONE: "runs that may have learnt from it (their snapshot was already gone, so unknown)",
        DESCENDANT: "runs warm-started from those",
    }
    notes = [f"{said[k]}, kept: {names(root, map(root.run_dir, runs[k]))}" for k in said if runs[k]]
    if notes:
        notes.append(
            "a trained generator cannot forget one face: these runs are marked (runs/<run>/taken_down.json) "
            "and no run is warm-started from them again (`faces train` trains from scratch instead); "
            "retrain, or delete them, to forget it fully"
        )
    return notes


def first_stored(root: DataRoot, target: Target) -> str | None:
    """When the earliest of the images was first stored (None when one has no record): a run started
    before then cannot have learnt from them."""
    seen = raw_manifest.first_seen_by_hash(root.raw_manifest)
    times = [seen.get(sha) for sha in target.shas]
    return min(times) if times and None not in times else None
