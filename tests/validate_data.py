"""Data roots for the validation and takedown tests: real crops of the shared photos, crafted bad ones.

Manifests are built with sqlite3 exactly as docs/DESIGN.md lays them out, as scrape and preprocess
would leave them; crops are 64x64 squares around the pupils (pupils.csv), so YuNet finds the faces.
"""

import csv
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageSequence

from common.files import sha256_bytes
from common.layout import DataRoot

PHOTOS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "photos"
NEUTRAL = PHOTOS / "webmorph-neutral"
LICENCE = "CC BY 4.0"

RAW_SCHEMA = """
CREATE TABLE files(sha256 TEXT PRIMARY KEY, path TEXT, type TEXT, bytes INTEGER, width INTEGER,
    height INTEGER, first_seen TEXT);
CREATE TABLE urls(url TEXT PRIMARY KEY, page_url TEXT, host TEXT, status TEXT, http_status INTEGER,
    sha256 TEXT, bytes INTEGER, type TEXT, width INTEGER, height INTEGER, etag TEXT, last_modified TEXT,
    fetched_at TEXT, licence TEXT, alt TEXT, opt_out TEXT, error TEXT);
CREATE TABLE forgotten(key TEXT PRIMARY KEY, sha256 TEXT, at TEXT);
"""
FACES_SCHEMA = """
CREATE TABLE processed(sha256 TEXT, config_hash TEXT, status TEXT, faces INTEGER, error TEXT, at TEXT,
    PRIMARY KEY (sha256, config_hash));
CREATE TABLE crops(crop_id TEXT PRIMARY KEY, sha256 TEXT, face_index INTEGER, path TEXT, box TEXT,
    landmarks TEXT, score REAL, blur REAL, detector TEXT, config_hash TEXT, size INTEGER);
"""


def pupils() -> list[dict]:
    with open(NEUTRAL / "pupils.csv", newline="") as f:
        return list(csv.DictReader(f))


def face_crop(row: dict, size: int = 64) -> np.ndarray:
    """A square around the face, 2.4 pupil distances wide, centred a little below the eyes (BGR)."""
    image = cv2.imread(str(NEUTRAL / row["file"]))
    x1, y1, x2, y2 = (float(row[k]) for k in ("pupil1_x", "pupil1_y", "pupil2_x", "pupil2_y"))
    ipd = float(np.hypot(x2 - x1, y2 - y1))
    cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2 + 0.45 * ipd, int(2.4 * ipd)
    x0, y0 = int(cx - side / 2), int(cy - side / 2)
    return cv2.resize(image[y0 : y0 + side, x0 : x0 + side], (size, size), interpolation=cv2.INTER_AREA)


def png(bgr: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", bgr)
    assert ok
    return data.tobytes()


class Root:
    """A data root under construction: sources in raw/, crops in faces/, rows in both manifests."""

    def __init__(self, path: Path) -> None:
        self.root = DataRoot(path)
        self.root.raw_dir.mkdir(parents=True, exist_ok=True)
        self.root.faces_dir.mkdir(parents=True, exist_ok=True)
        for db, schema in ((self.root.raw_manifest, RAW_SCHEMA), (self.root.faces_manifest, FACES_SCHEMA)):
            if not db.exists():
                with closing(sqlite3.connect(db)) as con:
                    con.executescript(schema)
        self.day = 0

    def add_source(
        self,
        data: bytes,
        ext: str,
        url: str | None = None,
        page_url: str | None = None,
        opt_out: str | None = None,
        licence: str = LICENCE,
    ) -> str:
        """Store a source image as the crawler would; each call is one day later than the last."""
        sha = sha256_bytes(data)
        path = self.root.raw_path(sha, ext)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.day += 1
        when = (
            f"2024-01-{self.day:02d}T12:00:00Z" if self.day < 29 else f"2024-02-{self.day - 28:02d}T12:00:00Z"
        )
        url = url or f"http://127.0.0.1:8001/img/{sha[:12]}.{ext}"
        page_url = page_url or f"http://127.0.0.1:8001/page/{sha[:6]}.html"
        with closing(sqlite3.connect(self.root.raw_manifest)) as con, con:
            con.execute(
                "INSERT OR IGNORE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sha, str(path.relative_to(self.root.root)), ext, len(data), 0, 0, when),
            )
            con.execute(
                "INSERT INTO urls(url, page_url, host, status, http_status, sha256, bytes, type, fetched_at, "
                "licence, opt_out) VALUES (?, ?, ?, 'fetched', 200, ?, ?, ?, ?, ?, ?)",
                (url, page_url, "127.0.0.1", sha, len(data), ext, when, licence, opt_out),
            )
        return sha

    def add_crop(self, sha: str, crop: np.ndarray | bytes, k: int = 0) -> str:
        crop_id = f"{sha}-{k}"
        path = self.root.crop_path(sha, k)
        path.write_bytes(crop if isinstance(crop, bytes) else png(crop))
        with closing(sqlite3.connect(self.root.faces_manifest)) as con, con:
            con.execute(
                "INSERT OR REPLACE INTO processed VALUES (?, 'cfg', 'ok', 1, NULL, '2024-03-01T00:00:00Z')",
                (sha,),
            )
            con.execute(
                "INSERT OR REPLACE INTO crops VALUES "
                "(?, ?, ?, ?, '[0, 0, 64, 64]', '[]', 0.9, 100.0, 'yunet', 'cfg', 64)",
                (crop_id, sha, k, str(path.relative_to(self.root.root))),
            )
        return crop_id

    def add_photo(self, row: dict, **kw) -> str:
        """A real photo as its source, its face crop as the crop. Returns the crop id."""
        sha = self.add_source((NEUTRAL / row["file"]).read_bytes(), "jpg", **kw)
        return self.add_crop(sha, face_crop(row))

    def add_crafted(self, crop: np.ndarray | bytes, **kw) -> str:
        """A crafted crop whose source image is the crop itself (so it has a real, unique sha256)."""
        data = crop if isinstance(crop, bytes) else png(crop)
        sha = self.add_source(data + b"\0source", "png", **kw)
        return self.add_crop(sha, crop)


def files_containing(root: Path, needle: bytes) -> list[Path]:
    """Every file under root whose bytes, or whose decoded pixels (PNG), contain `needle`."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        pixels = b""
        if path.suffix == ".png":
            img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            pixels = b"" if img is None else img.tobytes() + img[..., ::-1].tobytes()
        if needle in data or needle in pixels:
            hits.append(path)
    return hits


# --- a crawled data root, and the whole data root searched for what a takedown must remove -------------


def crawl_photos(root: DataRoot, rows: list[dict], per_page: int = 5) -> dict[str, str]:
    """The real crawler on a loopback website whose pages show the photos, `per_page` to a page: it writes
    raw/ and every table of raw/manifest.sqlite (files, urls, pages, frontier). Returns image URL -> page."""
    from scraper.crawl import crawl
    from tests.website import Website, scrape_config

    with Website(1) as web:
        (host,) = web.hosts
        pages = [rows[k : k + per_page] for k in range(0, len(rows), per_page)]
        host.page("/", "".join(f'<a href="/people/{k}.html">people</a>' for k in range(len(pages))))
        for k, shown in enumerate(pages):
            host.page(
                f"/people/{k}.html", "".join(f'<img src="/img/{r["file"]}" alt="portrait">' for r in shown)
            )
        for row in rows:
            host.image(f"/img/{row['file']}", (NEUTRAL / row["file"]).read_bytes())
        crawl(scrape_config(web, [host.url("/")]), root)
        return {
            host.url(f"/img/{r['file']}"): host.url(f"/people/{k}.html")
            for k, p in enumerate(pages)
            for r in p
        }


def pictures(path: Path) -> Iterator[tuple[np.ndarray, float]]:
    """Every picture a file holds (RGB), with how far (RMS, 0..255) a copy of a crop in it may be off:
    PNG images and GIF frames (a GIF's palette shifts colours a little), each image of a uint8 .npy."""
    if path.suffix in (".png", ".gif"):
        with Image.open(path) as image:
            for frame in ImageSequence.Iterator(image):
                yield np.asarray(frame.convert("RGB")), 12.0 if path.suffix == ".gif" else 1.0
    elif path.suffix == ".npy":
        array = np.load(path, mmap_mode="r")
        if array.dtype == np.uint8 and array.ndim >= 3 and array.shape[-1] == 3:
            yield from ((np.asarray(image), 1.0) for image in array.reshape(-1, *array.shape[-3:]))


def shows(picture: np.ndarray, crop: np.ndarray, tolerance: float) -> bool:
    """Whether the crop (RGB, or BGR) is in the picture at any offset: a tile of a grid or sheet, a row."""
    if picture.shape[0] < crop.shape[0] or picture.shape[1] < crop.shape[1]:
        return False
    image = picture.astype(np.float32)
    for template in (crop, crop[..., ::-1]):
        squared = cv2.matchTemplate(image, np.ascontiguousarray(template, np.float32), cv2.TM_SQDIFF)
        if squared.min() / template.size <= tolerance**2:
            return True
    return False


def without_forgotten(db: Path, scratch: Path) -> bytes:
    """The bytes of a copy of the raw manifest with its `forgotten` table (the takedown record) dropped
    and zeroed: whatever else it still says, stale free pages included, is left."""
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / db.name
    for suffix in ("", "-wal"):
        if Path(f"{db}{suffix}").is_file():
            shutil.copyfile(f"{db}{suffix}", f"{copy}{suffix}")
    with closing(sqlite3.connect(copy)) as con:
        con.execute("PRAGMA journal_mode = DELETE")
        con.execute("PRAGMA secure_delete = ON")
        con.execute("DROP TABLE IF EXISTS forgotten")
        con.commit()
    data = copy.read_bytes()
    copy.unlink()
    return data


@dataclass
class Traces:
    """What a takedown must leave nowhere: a slice of the original's bytes, a crop's pixels, texts."""

    original: bytes
    crop: np.ndarray  # RGB
    texts: list[str]  # URLs, hashes

    def search(self, root: DataRoot, scratch: Path) -> dict[str, list[str]]:
        """Where each is found under the data root: every file's bytes (the raw manifest's without its
        `forgotten` table), every picture's pixels; paths relative to the data root."""
        found: dict[str, list[str]] = {"original": [], "crop": [], **{t: [] for t in self.texts}}
        for path in sorted(p for p in root.root.rglob("*") if p.is_file()):
            name = str(path.relative_to(root.root))
            data = without_forgotten(path, scratch) if path == root.raw_manifest else path.read_bytes()
            for what, needle in [("original", self.original)] + [(t, t.encode()) for t in self.texts]:
                if needle in data:
                    found[what].append(name)
            if any(shows(picture, self.crop, tolerance) for picture, tolerance in pictures(path)):
                found["crop"].append(name)
        return found

    def nowhere(self) -> dict[str, list[str]]:
        return {"original": [], "crop": [], **{t: [] for t in self.texts}}
