"""`faces import`: local photos (files, folders searched recursively, zip archives) into the raw store.

The scrape stage's other source of raw photos. Each photo is checked and stored exactly as a crawled
download is (scraper.images.inspect_image, the `[scrape]` size, type, byte and pixel limits, the
content-addressed scraper.store.RawStore) and gets one `urls` row whose `url` is its `file:` URI
(`file:///abs/archive.zip#member` inside an archive), `page_url` the `--source-url` if given, with
the licence and the import time. The row and the file record are written in one transaction after
the file itself, so a killed import leaves nothing half-written: run it again and it goes on.
A second import of the same files reads none of them: each row keeps the file's size and modification
time (size and CRC inside an archive) in its `etag` column, and an unchanged file is skipped.
"""

import os
import re
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from common.clock import now_iso
from common.files import sha256_bytes, sha256_file
from common.layout import DataRoot
from common.report import BadInputError, StageReport
from scraper.config import ScrapeConfig
from scraper.images import ImageInfo, NotAnImage, inspect_image
from scraper.manifest import URL_COLUMNS, Manifest, urls_found_at
from scraper.store import RawStore, raw_lock

Progress = Callable[[int, int, str], None]
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp"})
MAX_LISTED = 50  # refused files named one by one in the report
SHA256 = re.compile(r"[0-9a-f]{64}")


class TooLarge(Exception):
    """A file over [scrape] max_bytes: refused before (or while) it is read."""


@dataclass(frozen=True)
class Source:
    """One photo to import: a file, or a member of a zip archive."""

    url: str  # file:///abs/path, or file:///abs/archive.zip#member
    shown: str  # how the user wrote it: path, or archive.zip:member
    signature: str  # changes when the content may have: size and mtime, or size and CRC
    size: int
    path: Path  # the file, or the archive
    member: str | None = None


@dataclass
class Found:
    sources: list[Source] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files in folders that are not image files
    refused: list[tuple[str, str]] = field(default_factory=list)  # (shown, reason): unreadable in a folder


def find_sources(paths: Iterable[str | Path]) -> Found:
    """Every photo the paths name, in a stable order; a missing path is an error before any work."""
    paths = [Path(p).expanduser() for p in paths]
    if not paths:
        raise BadInputError("faces import: no path given; name the photos, folders or zip archives to import")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise BadInputError(f"faces import: {', '.join(missing)}: no such file or folder; check the path")
    found = Found()
    for path in paths:
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink()):
                if any(part.startswith(".") for part in child.relative_to(path).parts):
                    found.ignored.append(str(child))  # hidden: .DS_Store, ._photo.jpg, .git/
                elif not child.exists():
                    found.refused.append((str(child), f"a link to {os.readlink(child)}, which is missing"))
                else:
                    _add_file(found, child, in_folder=True)
        else:
            _add_file(found, path, in_folder=False)
    return found


def _add_file(found: Found, path: Path, in_folder: bool) -> None:
    """A photo, the photos of an archive, or (in a folder) a file that is not an image, ignored."""
    if path.suffix.lower() == ".zip" or (not in_folder and zipfile.is_zipfile(path)):
        try:
            found.sources += _archive_members(path, found)
        except BadInputError as e:
            if not in_folder:
                raise  # named on the command line: the user meant this archive
            found.refused.append((str(path), str(e).removeprefix(f"faces import: {path} ")))
    elif not in_folder or path.suffix.lower() in IMAGE_SUFFIXES:
        st = path.stat()
        url = path.resolve().as_uri()
        found.sources.append(Source(url, str(path), f"{st.st_size}-{st.st_mtime_ns}", st.st_size, path))
    else:
        found.ignored.append(str(path))


def _archive_members(path: Path, found: Found) -> list[Source]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = sorted(archive.infolist(), key=lambda i: i.filename)
    except (OSError, zipfile.BadZipFile) as e:
        raise BadInputError(
            f"faces import: {path} is not a readable zip archive ({e}); check the file"
        ) from None
    base, sources = path.resolve().as_uri(), []
    # zipfile reads only the last of several members of one name: the others would be lost unnoticed.
    shared = Counter(info.filename for info in infos)
    for info in infos:
        name = info.filename
        if info.is_dir() or shared[name] == 0:
            continue
        if Path(name).suffix.lower() not in IMAGE_SUFFIXES or "__MACOSX/" in name:
            found.ignored.append(f"{path}:{name}")
            continue
        if shared[name] > 1:
            found.refused.append((f"{path}:{name}", f"{shared[name]} members share this name; rename them"))
            shared[name] = 0  # refused once, for all of them
            continue
        url = f"{base}#{quote(name)}"
        signature = f"{info.file_size}-{info.CRC:08x}"
        sources.append(Source(url, f"{path}:{name}", signature, info.file_size, path, name))
    return sources


class Importer:
    """Imports sources one by one; each ends as one of the crawler's statuses, or `unchanged`."""

    def __init__(
        self,
        config: ScrapeConfig,
        root: DataRoot,
        manifest: Manifest,
        licence: str | None,
        source_url: str | None,
        force: bool,
    ) -> None:
        self.config, self.manifest, self.store = config, manifest, RawStore(root)
        self.licence = licence or config.licence
        self.source_url, self.force = source_url, force
        self.archives = ExitStack()
        self._open: dict[Path, zipfile.ZipFile] = {}
        self.refused: list[tuple[str, str]] = []  # (shown, reason)

    def run(self, source: Source) -> str:
        """Import one photo unless it was taken down or is unchanged since its last import."""
        previous = self.manifest.url_row(source.url)
        if self.manifest.forgotten(source.url):
            return "forgotten"
        if not self.force and _unchanged(previous, source):
            return "unchanged"
        try:
            data = self._read(source)
        except Exception as e:  # unreadable: permissions, a vanished file, a corrupt or encrypted member
            return self._refuse(
                source, previous, "failed", str(e) if isinstance(e, TooLarge) else f"unreadable: {e}"
            )
        try:
            info = inspect_image(data, self.config.max_pixels)
        except NotAnImage as e:
            return self._refuse(source, previous, "not_image", str(e))
        fields = {"bytes": len(data), "type": info.type, "width": info.width, "height": info.height}
        if refusal := self._refusal(info.type, info.width, info.height):
            return self._refuse(source, previous, *refusal, **fields)
        return self._store(source, previous, data, info, fields)

    def _store(
        self, source: Source, previous: dict | None, data: bytes, info: ImageInfo, fields: dict
    ) -> str:
        """The file first, then its file and URL rows in one transaction: a kill between them leaves a
        file that the next import finds in place and records."""
        sha256 = sha256_bytes(data)
        if self.manifest.forgotten(sha256):
            return "forgotten"
        if previous and previous["sha256"] == sha256:
            status = "fetched" if self.force else "not_modified"
        else:
            status = "duplicate" if self.manifest.has_file(sha256) else "fetched"
        file_row = self.store.put(data, info, sha256)
        self.manifest.finish_image(source.url, self._row(source, status, sha256=sha256, **fields), file_row)
        return status

    def _read(self, source: Source) -> bytes:
        """The bytes, refused unread when larger than max_bytes (an archive member's size is checked
        as it is read too: its header may lie)."""
        limit = self.config.max_bytes
        if source.size > limit:
            raise TooLarge(f"{source.size} bytes is over [scrape] max_bytes = {limit}")
        if source.member is None:
            with open(source.path, "rb") as f:
                data = f.read(limit + 1)
        else:
            with self._archive(source.path).open(source.member) as f:
                data = f.read(limit + 1)
        if len(data) > limit:
            raise TooLarge(f"more than [scrape] max_bytes = {limit} bytes")
        return data

    def _archive(self, path: Path) -> zipfile.ZipFile:
        if path not in self._open:
            self._open[path] = self.archives.enter_context(zipfile.ZipFile(path))
        return self._open[path]

    def _refusal(self, kind: str, width: int, height: int) -> tuple[str, str] | None:
        c = self.config
        if kind not in c.allowed_types:
            return "not_image", f"{kind} is not in [scrape] allowed_types"
        if width < c.min_width or height < c.min_height:
            return (
                "too_small",
                f"{width}x{height} is under [scrape] min_width x min_height {c.min_width}x{c.min_height}",
            )
        return None

    def _refuse(self, source: Source, previous: dict | None, status: str, reason: str, **fields) -> str:
        """Record why a photo was not stored; an earlier good import of the same path is kept."""
        self.refused.append((source.shown, reason))
        row = self._row(source, status, error=reason, **fields)
        if previous and previous["sha256"]:
            row = previous | {"error": f"{status} at re-import ({reason}); earlier copy kept"}
        self.manifest.finish_image(source.url, row)
        return status

    def _row(self, source: Source, status: str, **fields) -> dict:
        row = dict.fromkeys(URL_COLUMNS)
        row |= {"url": source.url, "page_url": self.source_url, "status": status, "etag": source.signature}
        return row | {"licence": self.licence, "fetched_at": now_iso()} | fields

    def close(self) -> None:
        self.archives.close()


def _unchanged(previous: dict | None, source: Source) -> bool:
    """Imported before from the same, unmodified file: nothing to read."""
    return bool(previous and previous["sha256"] and previous["etag"] == source.signature)


def import_photos(
    config: ScrapeConfig,
    root: DataRoot,
    *,
    paths: Iterable[str | Path],
    licence: str | None = None,
    source_url: str | None = None,
    force: bool = False,
    on_progress: Progress | None = None,
) -> StageReport:
    """Import photos into `root`'s raw store (see the module docstring); `force` reads every file again."""
    started = time.monotonic()
    check_source_url(source_url)
    found = find_sources(paths)
    progress = on_progress or (lambda done, total, message: None)
    outcomes: dict[str, int] = {}
    # The crawl's lock: one writer of raw/ at a time, and a killed writer's temporary files go first.
    with raw_lock(root.raw_dir), Manifest(root.raw_manifest) as manifest:
        RawStore(root).remove_leftovers()
        importer = Importer(config, root, manifest, licence, source_url, force)
        try:
            for done, source in enumerate(found.sources, 1):
                outcome = importer.run(source)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                progress(done, len(found.sources), outcome)  # no path: Prefect's database keeps it
        finally:
            importer.close()
    return _report(root, found, outcomes, found.refused + importer.refused, time.monotonic() - started)


def check_source_url(url: str | None) -> None:
    if url is not None and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname):
        raise BadInputError(
            f"--source-url {url!r} is not an http(s) URL; give the page the photos come from, "
            "e.g. https://example.org/gallery, or leave it out"
        )


def _report(
    root: DataRoot, found: Found, outcomes: dict[str, int], refused: list[tuple[str, str]], seconds: float
) -> StageReport:
    stored = outcomes.get("fetched", 0)
    counts = {
        "files": len(found.sources),
        "imported": stored,
        "duplicate": outcomes.get("duplicate", 0),
        "unchanged": outcomes.get("unchanged", 0) + outcomes.get("not_modified", 0),
        "refused": len(refused),
        "taken down": outcomes.get("forgotten", 0),
        "ignored": len(found.ignored),
    }
    notes = [f"{shown}: {reason}" for shown, reason in refused[:MAX_LISTED]]
    if len(refused) > MAX_LISTED:
        notes.append(
            f"... and {len(refused) - MAX_LISTED} more refused (`urls` rows with an `error` say why)"
        )
    if found.ignored:
        shown = ", ".join(Path(p).name for p in found.ignored[:5])
        notes.append(
            f"{len(found.ignored)} file(s) in the folders are not image files and were ignored: {shown}"
        )
    return StageReport(
        stage="import",
        counts=counts,
        outputs={"raw": str(root.raw_dir), "manifest": str(root.raw_manifest)},
        notes=notes,
        tables={"refused": [{"file": shown, "reason": reason} for shown, reason in refused]},
        seconds=seconds,
    )


# --- takedown by path ---------------------------------------------------------------------------------


def takedown_key(key: str, root: DataRoot) -> str:
    """`faces forget` of a local photo: its path (or `file:` URI) becomes the sha256 it was imported as
    (the file may be gone since), or the sha256 of the file's bytes, so it is taken down and never
    imported again. URLs and hashes pass unchanged, and so does anything else (forget names what it takes)."""
    if key.startswith(("http://", "https://")) or SHA256.fullmatch(key.strip().lower()):
        return key
    url = key if key.startswith("file:") else Path(key).expanduser().resolve().as_uri()
    stored = {sha for sha in urls_found_at(root.raw_manifest, url).values() if sha}
    if len(stored) == 1:
        return stored.pop()
    path = Path(unquote(urlsplit(url).path))
    if "#" not in url and path.is_file():
        return sha256_file(path)
    if key.startswith("file:") or path.exists():
        raise BadInputError(
            f"faces forget {key}: no photo was imported from there; give the path of one imported file, "
            "or the sha256 from a dataset's index.csv"
        )
    return key
