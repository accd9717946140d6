"""faces.toml: one table per stage; typos and out-of-range values are errors naming the key."""

import subprocess
import sys

import pytest

from common.report import BadInputError
from flows.config import PipelineConfig, load_config, to_toml


def write(tmp_path, text: str):
    path = tmp_path / "faces.toml"
    path.write_text(text)
    return path


def test_tables_map_to_stage_models(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            """
data_dir = "somewhere"
[schedule]
cron = "30 2 * * *"
timezone = "Europe/Berlin"
[scrape]
seeds = ["http://127.0.0.1:8000/"]
default_delay = 0.5
[validate]
min_images = 3
[train]
steps = 10
ngf = 8
""",
        )
    )
    assert cfg.data_dir == "somewhere"
    assert cfg.schedule.timezone == "Europe/Berlin"
    assert cfg.scrape.seeds == ["http://127.0.0.1:8000/"] and cfg.scrape.default_delay == 0.5
    assert cfg.validate_.min_images == 3
    assert (cfg.train.steps, cfg.train.ngf, cfg.train.ndf) == (10, 8, 64)


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(BadInputError, match=r"unknown key \[train\] stpes"):
        load_config(write(tmp_path, "[train]\nstpes = 10\n"))


def test_unknown_table_is_named(tmp_path):
    with pytest.raises(BadInputError, match=r"unknown key.*trian"):
        load_config(write(tmp_path, "[trian]\nsteps = 10\n"))


def test_out_of_range_value_names_key_and_value(tmp_path):
    with pytest.raises(BadInputError, match=r"\[train\] batch_size: .*greater than or equal to 1.*got 0"):
        load_config(write(tmp_path, "[train]\nbatch_size = 0\n"))


def test_bad_cron_and_timezone_are_errors(tmp_path):
    with pytest.raises(BadInputError) as e:
        load_config(write(tmp_path, '[schedule]\ncron = "every night"\ntimezone = "Mars/Olympus"\n'))
    assert "[schedule] cron" in str(e.value) and "[schedule] timezone" in str(e.value)


def test_broken_toml_and_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="not valid TOML"):
        load_config(write(tmp_path, "[train\nsteps = 1\n"))
    with pytest.raises(BadInputError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_printed_config_reads_back_identically(tmp_path):
    cfg = PipelineConfig.model_validate({"train": {"steps": 7}, "scrape": {"licence": "CC0"}})
    assert load_config(write(tmp_path, to_toml(cfg))) == cfg


def test_cli_exits_nonzero_with_one_line_reason(tmp_path):
    path = write(tmp_path, "[train]\nbatch_size = -3\n")
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "config", "--config", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "[train] batch_size" in result.stderr
