"""`python -m scraper CONFIG [--data-dir DIR] [--force]`: the scrape stage alone, without Prefect.

CONFIG is a TOML file with a `[scrape]` table (faces.toml, configs/wikimedia-commons.toml) or a
JSON file holding the table's keys. Prints the summary; exits 1 with one line on bad input.
"""

import argparse
import json
import sys
import tomllib
from pathlib import Path

from pydantic import ValidationError

from common.layout import DataRoot
from common.report import BadInputError
from scraper.config import ScrapeConfig
from scraper.crawl import crawl


def load(path: Path) -> ScrapeConfig:
    if path.suffix == ".json":
        table = json.loads(path.read_text())
    else:
        with open(path, "rb") as f:
            table = tomllib.load(f).get("scrape")
        if table is None:
            raise BadInputError(f"{path} has no [scrape] table; add one (see docs/scraper.md)")
    try:
        return ScrapeConfig(**table)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise BadInputError(f"{path} [scrape]: {problems}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scraper", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--force", action="store_true", help="ignore stored ETag/Last-Modified")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args(argv)
    try:
        report = crawl(
            load(args.config), DataRoot(args.data_dir), force=args.force, progress_bar=args.progress
        )
    except BadInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
