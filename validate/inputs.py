"""Validation's inputs, read through their owners: the crops preprocess made (preprocess.manifest) and
their sources' provenance, opt-outs and takedowns (scraper.manifest). Nothing here writes."""

from dataclasses import dataclass
from pathlib import Path

from common.files import sha256_file
from common.layout import DataRoot
from common.report import BadInputError
from preprocess import manifest as faces_manifest
from scraper import manifest as raw_manifest


def as_root(root: DataRoot | str | Path) -> DataRoot:
    return root if isinstance(root, DataRoot) else DataRoot(root)


@dataclass
class Crop:
    crop_id: str
    sha256: str  # the source image
    path: Path  # absolute
    file_sha256: str | None  # None: the file is missing
    first_seen: str | None  # when its source was first stored; orders "earliest" for duplicates


def read_crops(root: DataRoot) -> list[Crop]:
    """Every crop in faces/manifest.sqlite with the hash of its file, earliest source first."""
    if not root.faces_manifest.is_file():
        raise BadInputError(
            f"no crops to validate: {root.faces_manifest} does not exist; run the preprocess stage first "
            "(`faces preprocess`)"
        )
    rows = faces_manifest.current_crops(root.faces_manifest)
    if rows is None:
        raise BadInputError(f"{root.faces_manifest} has no crops table; rerun `faces preprocess`")
    first_seen = raw_manifest.first_seen_by_hash(root.raw_manifest)
    crops = []
    for crop_id, sha, rel in rows:
        path = root.root / rel
        file_sha = sha256_file(path) if path.is_file() else None
        crops.append(Crop(crop_id, sha, path, file_sha, first_seen.get(sha)))
    crops.sort(key=lambda c: (c.first_seen is None, c.first_seen or "", c.crop_id))
    return crops


@dataclass
class Provenance:
    url: str = ""
    page_url: str = ""
    host: str = ""
    licence: str = ""
    fetched_at: str = ""


@dataclass
class Sources:
    provenance: dict[str, Provenance]  # source sha256 -> its earliest fetched URL
    opted_out: dict[str, str]  # source sha256 -> the directive (or status) that opted it out
    forgotten: set[str]  # source sha256s taken down


def read_sources(root: DataRoot) -> Sources:
    sources = Sources({}, {}, raw_manifest.forgotten_hashes(root.raw_manifest))
    for row in raw_manifest.image_urls(root.raw_manifest):  # earliest fetched first
        sha = row["sha256"]
        sources.provenance.setdefault(
            sha,
            Provenance(
                row["url"],
                row["page_url"] or "",
                row["host"] or "",
                row["licence"] or "",
                row["fetched_at"] or "",
            ),
        )
        if row["opt_out"] or row["status"] == "opted_out":
            sources.opted_out.setdefault(sha, row["opt_out"] or row["status"])
    return sources
