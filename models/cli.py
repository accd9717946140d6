"""`python -m models.train` and `torchrun -m models.train`: the train stage from the command line.

The settings are faces.toml's `[train]` table and `data_dir`, read and reported on by common.config
(the one TOML reader and error format of every entry point), with `--set KEY=VALUE` overrides on
top. Under torchrun every process reads them, and only rank 0 logs at INFO and prints the report.
"""

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from common.config import parse_model, parse_setting, read_toml
from common.layout import DataRoot
from common.report import BadInputError
from models.config import TrainConfig
from models.train import train

DESCRIPTION = "Train the DCGAN (or the MLP GAN) on the latest dataset snapshot: fast, resumable, watched."


def load_train_config(path: Path | None, overrides: list[str]) -> tuple[TrainConfig, str]:
    """faces.toml's [train] table (plus KEY=VALUE overrides) and its data_dir ("data" without a file)."""
    table: dict[str, Any] = {}
    data_dir = "data"
    if path is not None:
        doc = read_toml(path)
        table, data_dir = dict(doc.get("train", {})), doc.get("data_dir", data_dir)
    table |= dict(map(parse_setting, overrides))
    return parse_model(TrainConfig, table, str(path or "settings"), table="train"), data_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=DESCRIPTION)
    parser.add_argument("--config", type=Path, help="faces.toml: its [train] table and data_dir")
    parser.add_argument("--data-dir", help="the data root (default: data_dir from the config, else ./data)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a [train] key"
    )
    parser.add_argument("--force", action="store_true", help="retrain even if the run has finished")
    args = parser.parse_args(argv)
    main_process = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        config, data_dir = load_train_config(args.config, args.set)
        report = train(config, DataRoot(args.data_dir or data_dir), force=args.force)
    except BadInputError as e:
        print(f"models.train: error: {e}", file=sys.stderr)
        return 1
    if main_process:
        print(report.markdown())
    return 0
