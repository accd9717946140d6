"""`python -m scraper CONFIG [--data-dir DIR] [--force]`: the scrape stage alone, without Prefect.

CONFIG is a TOML file with a `[scrape]` table (faces.toml, configs/wikimedia-commons.toml) or a
JSON file holding the table's keys. Prints the summary; exits 1 with one line on bad input.
"""

import argparse
import json
import sys
from pathlib import Path

from common.config import parse_model, read_toml
from common.layout import DataRoot
from common.report import BadInputError
from scraper.config import ScrapeConfig
from scraper.crawl import crawl


def load(path: Path) -> ScrapeConfig:
    """The `[scrape]` table of a TOML file, or a JSON file holding the table's keys."""
    if path.suffix != ".json":
        doc = read_toml(path)
        if "scrape" not in doc:
            raise BadInputError(f"{path} has no [scrape] table; add one (see docs/scraper.md)")
        return parse_model(ScrapeConfig, doc["scrape"], str(path), "scrape")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(
            f"cannot read {path} as JSON ({e}); pass a [scrape] table as a JSON object"
        ) from None
    return parse_model(ScrapeConfig, table, str(path), "scrape")


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
