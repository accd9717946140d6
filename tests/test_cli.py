"""The `faces` command: a failed stage exits non-zero with a one-line reason."""

import os
import subprocess
import sys


def test_failed_stage_exits_nonzero_with_one_line_reason(tmp_path):
    env_home = tmp_path / "prefect"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "--stages",
            "validate,train",
            "--data-dir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "PREFECT_HOME": str(env_home),
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(env_home / "results"),
        },
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("faces: error: "), result.stderr[-2000:]
    assert "preprocess" in last  # names what is missing and the stage that makes it
    assert not (tmp_path / "d" / "runs").exists()  # training never started


def test_unknown_stage_is_named():
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--stages", "scrape,trian"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "trian" in result.stderr and result.stderr.count("\n") == 1
