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


@pytest.mark.parametrize("table", ["train", "export"])
def test_a_negative_seed_is_named_when_the_config_is_read(tmp_path, table):
    # Before, it passed here and failed inside numpy mid-stage, as a retryable error that named no key.
    with pytest.raises(BadInputError, match=rf"\[{table}\] seed: .*greater than or equal to 0.*got -1"):
        load_config(write(tmp_path, f"[{table}]\nseed = -1\n"))


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


@pytest.mark.parametrize(
    ("line", "kind"),
    [("steps = true", "true/false"), ('steps = "300"', "text"), ('lr_g = "2e-4"', "text")],
)
def test_numbers_written_as_text_or_booleans_are_errors(tmp_path, line, kind):
    with pytest.raises(BadInputError, match=rf"\[train\] {line.split()[0]}: must be a number, not {kind}"):
        load_config(write(tmp_path, f"[train]\n{line}\n"))


def test_a_float_setting_takes_an_integer(tmp_path):
    assert load_config(write(tmp_path, "[train]\nlr_g = 1\n")).train.lr_g == 1.0


def test_crop_size_and_image_size_must_agree_when_the_config_is_read(tmp_path):
    with pytest.raises(BadInputError, match=r"crop_size = 128 but \[validate\] image_size = 64"):
        load_config(write(tmp_path, "[preprocess]\ncrop_size = 128\n"))
    both = load_config(write(tmp_path, "[preprocess]\ncrop_size = 128\n[validate]\nimage_size = 128\n"))
    assert both.preprocess.crop_size == both.validate_.image_size == 128


def test_unreadable_configs_are_named_with_the_fix(tmp_path):
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[scrape]\nlicence = "Caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(BadInputError, match=r"latin1\.toml: not UTF-8 text.*save the file as UTF-8"):
        load_config(latin1)
    with pytest.raises(BadInputError, match=r"is a folder; pass a faces\.toml file"):
        load_config(tmp_path)
    with pytest.raises(BadInputError, match="data_dir is empty"):
        load_config(write(tmp_path, 'data_dir = ""\n'))


def test_demo_settings_are_a_valid_config_and_steps_override_them(tmp_path):
    from demo.run import demo_config, load_demo

    gallery, settings = load_demo()
    cfg = demo_config(settings, tmp_path, "http://127.0.0.1:9/")
    assert cfg.scrape.seeds == ["http://127.0.0.1:9/"] and cfg.train.device == "cpu"
    assert cfg.train.steps == settings.train.steps and gallery.faces >= 1
    assert demo_config(settings, tmp_path, "http://127.0.0.1:9/", steps=7).train.steps == 7
    assert settings.scrape.seeds == []  # each run gets its own copy

    typo = write(tmp_path, "[gallery]\nfacess = 3\n")
    with pytest.raises(BadInputError, match=r"faces\.toml: unknown key \[gallery\] facess"):
        load_demo(typo)
