"""The quarantine: crops a validation run held back, with reasons; listing them and releasing one.

Quarantined crops stay in faces/ untouched; datasets/validate.sqlite (validate.store) keeps the last
run's quarantine and the user's releases. `faces validate --quarantine` and `--release` call here.
"""

import sqlite3
from pathlib import Path

from common.clock import now_iso
from common.layout import DataRoot
from common.report import BadInputError
from validate.checks import REASONS
from validate.inputs import as_root
from validate.judge import Verdict
from validate.store import add_release, open_store, quarantine_rows, replace_quarantine


def write_quarantine(store: sqlite3.Connection, verdicts: list[Verdict]) -> None:
    """The run's quarantined crops replace the last run's."""
    at = now_iso()
    rows = [
        (
            v.crop.crop_id,
            v.crop.sha256,
            v.crop.file_sha256,
            str(v.crop.path),
            ",".join(r for r, _ in v.reasons),
            "; ".join(f"{r}: {d}" for r, d in v.reasons),
            at,
        )
        for v in verdicts
        if v.reasons
    ]
    replace_quarantine(store, rows)


def list_quarantine(root: DataRoot | str | Path, reason: str | None = None) -> list[dict]:
    """Quarantined crops of the last validation run: crop_id, reasons, detail, path; by `reason` if given."""
    root = as_root(root)
    if reason is not None and reason not in REASONS:
        raise BadInputError(f"unknown quarantine reason {reason!r}; use one of: {', '.join(REASONS)}")
    if not root.validate_store.is_file():
        return []
    with open_store(root) as store:
        rows = quarantine_rows(store)
    out = [{"crop_id": c, "reasons": r, "detail": d, "path": p} for c, r, d, p in rows]
    return [q for q in out if reason is None or reason in q["reasons"].split(",")]


def release(crop_id: str, root: DataRoot | str | Path) -> dict:
    """Let a quarantined crop into the next snapshot (until its file changes). Opt-outs cannot be released."""
    root = as_root(root)
    entry = next((q for q in list_quarantine(root) if q["crop_id"] == crop_id), None)
    if entry is None:
        raise BadInputError(
            f"crop {crop_id!r} is not in quarantine; `faces validate --quarantine` lists the crops that are "
            "(run `faces validate` first if it has not run since the crop was made)"
        )
    if "opted_out" in entry["reasons"].split(","):
        raise BadInputError(
            f"crop {crop_id!r} cannot be released: its source opted out or was taken down ({entry['detail']})"
        )
    with open_store(root) as store:
        add_release(store, crop_id)
    return entry
