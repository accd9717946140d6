"""raw/manifest.sqlite: the tables of docs/DESIGN.md (files, urls, forgotten) and the crawler's own
(frontier, pages, robots, crawls, hosts). This module is the only code that writes SQL against them.

`Manifest` is the crawler's: one connection shared by its threads behind a lock; every change that
belongs together (a stored file, its URL row and the frontier entry that led to it) is one
transaction, so a crawl killed at any moment leaves a consistent manifest and a frontier to resume
from. The functions at the end are the other stages': preprocess lists stored files, validate reads
provenance, a takedown records and deletes. They take the manifest's path, never change its schema
beyond the `forgotten` table, and tolerate a manifest without the tables they read.
"""

import json
import sqlite3
import threading
from collections.abc import Collection, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from common.clock import now_iso
from scraper.robots import RobotsPolicy

URL_COLUMNS = [
    "url", "page_url", "host", "status", "http_status", "sha256", "bytes", "type", "width", "height",
    "etag", "last_modified", "fetched_at", "licence", "alt", "opt_out", "error", "caption",
]  # fmt: skip
PAGE_COLUMNS = [
    "url", "host", "status", "http_status", "etag", "last_modified", "fetched_at", "opt_out", "nofollow",
    "links", "images", "error",
]  # fmt: skip

IMAGES_SCHEMA = """
CREATE TABLE IF NOT EXISTS files(
    sha256 TEXT PRIMARY KEY, path TEXT NOT NULL, type TEXT NOT NULL, bytes INTEGER NOT NULL,
    width INTEGER, height INTEGER, first_seen TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS urls(
    url TEXT PRIMARY KEY, page_url TEXT, host TEXT, status TEXT NOT NULL, http_status INTEGER,
    sha256 TEXT, bytes INTEGER, type TEXT, width INTEGER, height INTEGER, etag TEXT, last_modified TEXT,
    fetched_at TEXT, licence TEXT, alt TEXT, opt_out TEXT, error TEXT, caption TEXT);
CREATE INDEX IF NOT EXISTS urls_sha256 ON urls(sha256);
"""
# URLs and hashes taken down: the one table a takedown creates if the crawler has not.
FORGOTTEN_SCHEMA = """
CREATE TABLE IF NOT EXISTS forgotten(key TEXT PRIMARY KEY, sha256 TEXT, at TEXT);
CREATE INDEX IF NOT EXISTS forgotten_sha256 ON forgotten(sha256);
"""
CRAWLER_SCHEMA = """
CREATE TABLE IF NOT EXISTS frontier(
    seq INTEGER PRIMARY KEY AUTOINCREMENT, url TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    host TEXT NOT NULL, depth INTEGER NOT NULL, page_url TEXT, meta TEXT NOT NULL DEFAULT '{}',
    hops INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT 'pending');
CREATE INDEX IF NOT EXISTS frontier_pending ON frontier(state, host, seq);
CREATE TABLE IF NOT EXISTS pages(
    url TEXT PRIMARY KEY, host TEXT, status TEXT NOT NULL, http_status INTEGER, etag TEXT,
    last_modified TEXT, fetched_at TEXT, opt_out TEXT, nofollow INTEGER, links TEXT, images TEXT, error TEXT);
CREATE TABLE IF NOT EXISTS robots(
    origin TEXT PRIMARY KEY, verdict TEXT NOT NULL, body TEXT, reason TEXT, fetched_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS crawls(
    id INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT NOT NULL, finished_at TEXT, counts TEXT);
CREATE TABLE IF NOT EXISTS hosts(host TEXT PRIMARY KEY, last_end REAL, paused_until REAL);
"""
HOST_TIMES = ("last_end", "paused_until")  # wall-clock seconds: politeness across crawls
SCHEMA = IMAGES_SCHEMA + FORGOTTEN_SCHEMA + CRAWLER_SCHEMA


@dataclass
class Item:
    """One frontier entry: a page to visit or an image to fetch."""

    url: str
    kind: str  # "page" or "image"
    host: str
    depth: int = 0
    page_url: str | None = None
    meta: dict = field(default_factory=dict)  # image: alt, caption, licence, opt_out
    hops: int = 0  # redirects already followed to reach this URL


class Manifest:
    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # with WAL: safe against a killed process
        with self.db:
            self.db.executescript(SCHEMA)
            columns = {r["name"] for r in self.db.execute("PRAGMA table_info(urls)")}
            if "caption" not in columns:  # a manifest made by an older version or another tool
                self.db.execute("ALTER TABLE urls ADD COLUMN caption TEXT")

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def __enter__(self) -> "Manifest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ crawl runs

    def begin(self, fresh: bool) -> tuple[int, bool]:
        """(run id, resumed): an unfinished last run is resumed unless `fresh`; a new run empties the
        frontier, so every page is visited again (conditionally)."""
        with self._lock, self.db:
            last = self.db.execute("SELECT id, finished_at FROM crawls ORDER BY id DESC LIMIT 1").fetchone()
            if last is not None and last["finished_at"] is None and not fresh:
                return last["id"], True
            if last is not None and last["finished_at"] is None:
                self.db.execute("UPDATE crawls SET finished_at=? WHERE id=?", ("abandoned", last["id"]))
            self.db.execute("DELETE FROM frontier")
            cur = self.db.execute("INSERT INTO crawls(started_at) VALUES (?)", (now_iso(),))
            return int(cur.lastrowid), False

    def interrupted(self) -> bool:
        """True if the last crawl never finished: its process was killed or crashed."""
        last = self._one("SELECT id, finished_at FROM crawls ORDER BY id DESC LIMIT 1")
        return last is not None and last["finished_at"] is None

    def finish(self, run_id: int, counts: dict) -> None:
        sql = "UPDATE crawls SET finished_at=?, counts=? WHERE id=?"
        with self._lock, self.db:
            self.db.execute(sql, (now_iso(), json.dumps(counts), run_id))

    # ------------------------------------------------------------ frontier

    def enqueue(self, items: Iterable[Item], limits: dict[str, int]) -> tuple[int, int]:
        """Add new items (known URLs are ignored) while each kind stays within `limits`.

        Returns (added, refused by a limit). An opt-out on an item that is already pending is
        merged into it, so one opted-out page is enough to spare an image.
        """
        with self._lock, self.db:
            return self._enqueue(items, limits)

    def _enqueue(self, items: Iterable[Item], limits: dict[str, int]) -> tuple[int, int]:
        counts = dict(self.db.execute("SELECT kind, COUNT(*) FROM frontier GROUP BY kind").fetchall())
        added = over = 0
        for item in items:
            if self.db.execute("SELECT 1 FROM frontier WHERE url=?", (item.url,)).fetchone():
                if item.meta.get("opt_out"):
                    self._merge_opt_out(item)
                continue
            if counts.get(item.kind, 0) >= limits.get(item.kind, 1 << 62):
                over += 1
                continue
            self.db.execute(
                "INSERT INTO frontier(url, kind, host, depth, page_url, meta, hops) VALUES (?,?,?,?,?,?,?)",
                (item.url, item.kind, item.host, item.depth, item.page_url, json.dumps(item.meta), item.hops),
            )
            counts[item.kind] = counts.get(item.kind, 0) + 1
            added += 1
        return added, over

    def _merge_opt_out(self, item: Item) -> None:
        row = self.db.execute(
            "SELECT meta FROM frontier WHERE url=? AND state='pending'", (item.url,)
        ).fetchone()
        if row is not None:
            meta = json.loads(row["meta"]) | {"opt_out": item.meta["opt_out"]}
            self.db.execute("UPDATE frontier SET meta=? WHERE url=?", (json.dumps(meta), item.url))

    def pending_by_host(self) -> dict[str, int]:
        sql = "SELECT host, COUNT(*) FROM frontier WHERE state='pending' GROUP BY host ORDER BY MIN(seq)"
        with self._lock:
            return dict(self.db.execute(sql).fetchall())

    def next_pending(self, host: str, skip: set[str]) -> Item | None:
        sql = "SELECT * FROM frontier WHERE state='pending' AND host=? ORDER BY seq LIMIT ?"
        with self._lock:
            rows = self.db.execute(sql, (host, len(skip) + 1)).fetchall()
        return next((_item(row) for row in rows if row["url"] not in skip), None)

    def frontier_counts(self) -> tuple[int, int]:
        """(done, total) of the current crawl's frontier."""
        row = self._one("SELECT SUM(state='done'), COUNT(*) FROM frontier")
        return int(row[0] or 0), int(row[1] or 0)

    def mark_done(self, url: str) -> None:
        with self._lock, self.db:
            self.db.execute("UPDATE frontier SET state='done' WHERE url=?", (url,))

    # ------------------------------------------------------------ images

    def url_row(self, url: str) -> dict | None:
        row = self._one("SELECT * FROM urls WHERE url=?", url)
        return dict(row) if row else None

    def has_file(self, sha256: str) -> bool:
        return self._one("SELECT 1 FROM files WHERE sha256=?", sha256) is not None

    def forgotten(self, key: str) -> bool:
        """True if a URL or a content hash was taken down (a URL's takedown forgets its hash too)."""
        return self._one("SELECT 1 FROM forgotten WHERE key=? OR sha256=? LIMIT 1", key, key) is not None

    def finish_image(self, item_url: str, row: dict | None, file_row: dict | None = None) -> None:
        """Store an image's outcome: its file row (if new), its URL row, and the frontier entry done."""
        with self._lock, self.db:
            if file_row is not None:
                self.db.execute(
                    "INSERT OR IGNORE INTO files(sha256, path, type, bytes, width, height, first_seen) "
                    "VALUES (:sha256, :path, :type, :bytes, :width, :height, :first_seen)",
                    file_row,
                )
            if row is not None:
                self._upsert("urls", URL_COLUMNS, row)
            self.db.execute("UPDATE frontier SET state='done' WHERE url=?", (item_url,))

    # ------------------------------------------------------------ pages

    def page_row(self, url: str) -> dict | None:
        row = self._one("SELECT * FROM pages WHERE url=?", url)
        return dict(row) if row else None

    def finish_page(
        self, item_url: str, row: dict, found: list[Item], limits: dict[str, int]
    ) -> tuple[int, int]:
        """Store a page's outcome and what it links to in one transaction; returns enqueue()'s counts."""
        with self._lock, self.db:
            self._upsert("pages", PAGE_COLUMNS, row)
            added = self._enqueue(found, limits)
            self.db.execute("UPDATE frontier SET state='done' WHERE url=?", (item_url,))
            return added

    # ------------------------------------------------------------ robots.txt cache

    def robots(self, origin: str) -> RobotsPolicy | None:
        row = self._one("SELECT * FROM robots WHERE origin=?", origin)
        if row is None:
            return None
        return RobotsPolicy(row["verdict"], row["body"] or "", row["reason"] or "", row["fetched_at"])

    def save_robots(self, origin: str, policy: RobotsPolicy) -> None:
        sql = "INSERT OR REPLACE INTO robots(origin, verdict, body, reason, fetched_at) VALUES (?,?,?,?,?)"
        with self._lock, self.db:
            self.db.execute(sql, (origin, policy.verdict, policy.body, policy.reason, policy.fetched_at))

    # ------------------------------------------------------------ politeness across crawls

    def host_times(self, host: str) -> tuple[float | None, float | None]:
        """(last_end, paused_until) of a host: its last request's end and a pause's end, if known."""
        row = self._one(f"SELECT {', '.join(HOST_TIMES)} FROM hosts WHERE host=?", host)
        return tuple(row) if row else (None, None)

    def record_host_times(self, host: str, column: str, at: float) -> None:
        """Note a host's last request end or pause end (`column`: one of HOST_TIMES); it only grows."""
        sql = (
            f"INSERT INTO hosts(host, {column}) VALUES (?, ?) ON CONFLICT(host) "
            f"DO UPDATE SET {column}=MAX(COALESCE({column}, 0), excluded.{column})"
        )
        with self._lock, self.db:
            self.db.execute(sql, (host, at))

    # ------------------------------------------------------------ helpers

    def _one(self, sql: str, *args) -> sqlite3.Row | None:
        with self._lock:
            return self.db.execute(sql, args).fetchone()

    def _upsert(self, table: str, columns: list[str], row: dict) -> None:
        names = ", ".join(columns)
        values = ", ".join(f":{c}" for c in columns)
        updates = ", ".join(f"{c}=excluded.{c}" for c in columns[1:])
        self.db.execute(
            f"INSERT INTO {table}({names}) VALUES ({values}) "
            f"ON CONFLICT({columns[0]}) DO UPDATE SET {updates}",
            {c: row.get(c) for c in columns},
        )


def _item(row: sqlite3.Row) -> Item:
    fields = ("url", "kind", "host", "depth", "page_url", "hops")
    return Item(**{f: row[f] for f in fields}, meta=json.loads(row["meta"]))


# --- for the other stages ---------------------------------------------------------------------------


def _tables(con: sqlite3.Connection) -> set[str]:
    return {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _marks(values: Collection) -> str:
    return ",".join("?" * len(values))


def _rows(path: str | Path, table: str, sql: str, args: Iterable = ()) -> list[tuple]:
    """A query's rows; none when there is no manifest or no `table` in it (nothing is created)."""
    if not Path(path).is_file():
        return []
    with closing(sqlite3.connect(path, timeout=60)) as con:
        return con.execute(sql, tuple(args)).fetchall() if table in _tables(con) else []


def count_stored_files(path: str | Path) -> int:
    """Stored files, taken down or not."""
    return sum(n for (n,) in _rows(path, "files", "SELECT COUNT(*) FROM files"))


def stored_files(
    path: str | Path, *, after: str = "", limit: int = 1000, skip_forgotten: bool = True
) -> list[tuple[str, str]]:
    """One page of (sha256, path) of stored files in sha256 order: at most `limit`, from just after
    `after`. Files taken down are left out unless `skip_forgotten` is false."""
    if not Path(path).is_file():
        return []
    with closing(sqlite3.connect(path, timeout=60)) as con:
        tables = _tables(con)
        if "files" not in tables:
            return []
        where = "sha256 > ?"
        if skip_forgotten and "forgotten" in tables:
            where += " AND sha256 NOT IN (SELECT sha256 FROM forgotten WHERE sha256 IS NOT NULL)"
        sql = f"SELECT sha256, path FROM files WHERE {where} ORDER BY sha256 LIMIT ?"
        return con.execute(sql, (after, limit)).fetchall()


def first_seen_by_hash(path: str | Path) -> dict[str, str]:
    """When each stored file was first stored."""
    return {sha: str(at) for sha, at in _rows(path, "files", "SELECT sha256, first_seen FROM files") if at}


IMAGE_URL_COLUMNS = ["sha256", "url", "page_url", "host", "licence", "fetched_at", "status", "opt_out"]


def image_urls(path: str | Path) -> list[dict]:
    """Every URL row that served a stored image (IMAGE_URL_COLUMNS), earliest fetched first."""
    sql = (
        f"SELECT {', '.join(IMAGE_URL_COLUMNS)} FROM urls WHERE sha256 IS NOT NULL "
        "ORDER BY fetched_at IS NULL, fetched_at, url"
    )
    return [dict(zip(IMAGE_URL_COLUMNS, row, strict=True)) for row in _rows(path, "urls", sql)]


def forgotten_hashes(path: str | Path, key: str | None = None) -> set[str]:
    """Hashes taken down (only those recorded under `key`, if given)."""
    if key is None:
        rows = _rows(path, "forgotten", "SELECT sha256 FROM forgotten")
    else:
        rows = _rows(path, "forgotten", "SELECT sha256 FROM forgotten WHERE key = ?", (key,))
    return {sha for (sha,) in rows if sha}


def urls_found_at(path: str | Path, key: str) -> dict[str, str | None]:
    """URL -> the hash it served (None: nothing stored), for the URL `key` and every image URL found on
    the page `key`."""
    return dict(_rows(path, "urls", "SELECT url, sha256 FROM urls WHERE url = ? OR page_url = ?", (key, key)))


def urls_serving(path: str | Path, hashes: Collection[str]) -> dict[str, str]:
    """URL -> hash, for every URL that served one of `hashes`."""
    if not hashes:
        return {}
    sql = f"SELECT url, sha256 FROM urls WHERE sha256 IN ({_marks(hashes)})"
    return dict(_rows(path, "urls", sql, sorted(hashes)))


def record_forgotten(path: str | Path, rows: list[tuple[str, str | None, str]]) -> None:
    """Record (key, sha256 or None, at) rows as taken down, in one transaction; recorded keys stay."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, timeout=60)) as con:
        con.executescript(FORGOTTEN_SCHEMA)
        with con:
            con.executemany("INSERT OR IGNORE INTO forgotten(key, sha256, at) VALUES (?, ?, ?)", rows)


def delete_images(con: sqlite3.Connection, hashes: Collection[str], urls: Collection[str]) -> None:
    """Delete the files rows of `hashes` and the urls rows that served them or are in `urls`, within the
    caller's transaction (a takedown's, on a connection that zeroes the space it frees)."""
    tables = _tables(con)
    for table, column, values in (
        ("files", "sha256", hashes),
        ("urls", "sha256", hashes),
        ("urls", "url", urls),
    ):
        if values and table in tables:
            con.execute(f"DELETE FROM {table} WHERE {column} IN ({_marks(values)})", sorted(values))


def images_listed_on(path: str | Path, page_url: str) -> list[str]:
    """The image URLs the crawler found on `page_url` (its `pages.images`), fetched or not."""
    rows = _rows(path, "pages", "SELECT images FROM pages WHERE url = ?", (page_url,))
    return [image["url"] for (images,) in rows for image in json.loads(images or "[]")]


def delete_crawled(con: sqlite3.Connection, urls: Collection[str]) -> None:
    """In the caller's transaction, drop `urls` from the frontier (with what was found on them) and pages
    (their rows, and their entries in other pages' JSON lists, where each is written as json.dumps does)."""
    args, marks, quoted = sorted(urls), _marks(urls), json.dumps([json.dumps(u)[1:-1] for u in sorted(urls)])
    if urls and {"frontier", "pages"} <= _tables(con):
        con.execute(f"DELETE FROM frontier WHERE url IN ({marks}) OR page_url IN ({marks})", args * 2)
        con.execute(f"DELETE FROM pages WHERE url IN ({marks})", args)
        sql = "SELECT DISTINCT url, links, images FROM pages, json_each(?) WHERE instr(links||images, value)"
        for page, links, images in con.execute(sql, [quoted]).fetchall():
            links = json.dumps([u for u in json.loads(links) if u not in urls])
            images = json.dumps([i for i in json.loads(images) if i["url"] not in urls])
            con.execute("UPDATE pages SET links = ?, images = ? WHERE url = ?", (links, images, page))
