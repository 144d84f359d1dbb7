"""Every job's command line: bad flags fail at once (exit 2), and each kind of failure is
one ``<job> failed: ...`` line with its own exit code (jobs/cli.py), the traceback only
with --debug.

    .venv/bin/python -m pytest tests/jobs/test_cli.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import cli, evaluate, report, scan, train
from tests.helpers import rewrite_checkpoint, save_model, small_images

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("model") / "m", image_size=32)


BAD_FLAGS = [
    (scan, ["--input", "", "--model", "m", "--output", "o"], "--input is empty"),
    (scan, ["--input", "i", "--model", "m", "--output", " "], "--output is empty"),
    (scan, ["--manifest", "", "--model", "m", "--output", "o"], "--manifest is empty"),
    (scan, ["--input", "i", "--model", "", "--output", "o"], "--model is empty"),
    (scan, ["--input", "i", "--model", "m", "--output", "o", "--cpus-per-scorer", "inf"], "finite"),
    (scan, ["--input", "i", "--model", "m", "--output", "o", "--cpus-per-scorer", "nan"], "finite"),
    (scan, ["--input", "i", "--model", "m", "--output", "o", "--threshold", "nan"], "--threshold"),
    (scan, ["--input", "i", "--model", "m", "--output", "o", "--threshold", "2"], "--threshold"),
    (scan, ["--input", "i", "--model", "m", "--output", "o", "--allow-prefix", "x"], "--allow-prefix"),
    (scan, ["--manifest", "m.csv", "--model", "m", "--output", "o", "--allow-prefix", ""], "--allow-prefix"),
    (train, ["--data", "", "--output", "o"], "--data is empty"),
    (train, ["--data", "d", "--output", ""], "--output is empty"),
    (train, ["--data", "d", "--output", "o", "--lr", "inf"], "--lr must be a finite"),
    (train, ["--data", "d", "--output", "o", "--weight-decay", "inf"], "--weight-decay must be a finite"),
    (train, ["--data", "d", "--output", "o", "--label-smoothing", "nan"], "finite"),
    (evaluate, ["--data", "", "--model", "m"], "--data is empty"),
    (evaluate, ["--data", "d", "--model", "m", "--json", ""], "--json is empty"),
    (evaluate, ["--data", "d", "--model", "m", "--val-fraction", "nan"], "finite"),
    (report, ["--input", ""], "--input is empty"),
    (report, ["--input", "r", "--html", ""], "--html is empty"),
    (report, ["--input", "r", "--threshold", "nan"], "--threshold"),
]


@pytest.mark.parametrize("job, argv, words", BAD_FLAGS)
def test_empty_uris_and_non_finite_numbers_are_bad_flags(job, argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        job.main(argv)
    assert e.value.code == cli.BAD_FLAGS and words in capsys.readouterr().err


def one_line(err: str, job: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith(f"{job} failed")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_model_that_scores_nan_is_exit_3_naming_the_users_path(model, tmp_path, capsys):
    small_images(tmp_path / "in", 2)
    bad = save_model(tmp_path / "nan", image_size=32)
    rewrite_checkpoint(bad, weights=lambda s: s["fc.weight"].fill_(float("nan")))
    for m, words in [(bad, "NaN or infinity"), (tmp_path / "missing", "no checkpoint at")]:
        code = scan.main(["--input", str(tmp_path / "in"), "--model", str(m), "--output", str(tmp_path / "out"),
                          "--executor", "local"])
        line = one_line(capsys.readouterr().err, "scan")
        assert code == cli.BAD_MODEL and words in line and str(m) in line
    assert not (tmp_path / "out").exists()
    threshold = save_model(tmp_path / "t2", image_size=32)
    rewrite_checkpoint(threshold, threshold=2.0)
    assert evaluate.main(["--data", str(tmp_path / "in"), "--model", str(threshold)]) == cli.BAD_MODEL
    assert "threshold 2.0" in one_line(capsys.readouterr().err, "evaluate")


def test_debug_prints_the_traceback(tmp_path, capsys):
    code = scan.main(["--input", str(tmp_path), "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "o"),
                      "--debug"])
    assert code == cli.BAD_MODEL and "Traceback" in capsys.readouterr().err


def test_an_input_that_is_a_fifo_is_named_for_what_it_is(model, tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe")
    code = scan.main(["--input", str(tmp_path / "pipe"), "--model", str(model), "--output", str(tmp_path / "o"),
                      "--executor", "local"])
    assert code == cli.FAILED and "is a FIFO" in one_line(capsys.readouterr().err, "scan")


def test_s3_without_credentials_is_one_line_exit_4(model, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-m", "jobs.scan", "--input", "s3://uploads/x/", "--model", str(model),
                           "--output", str(tmp_path / "o"), "--executor", "local"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    line = one_line(done.stderr, "scan")
    assert done.returncode == cli.STORAGE and "credentials" in line, done.stderr


@pytest.mark.parametrize("e, code", [
    (cli.OutputError("x"), cli.OUTPUT), (ConnectionError("x"), cli.STORAGE), (PermissionError("x"), cli.STORAGE),
    (cli.InUseError("x"), cli.IN_USE), (KeyError("x"), cli.FAILED), (ValueError("x"), cli.FAILED),
])
def test_exit_codes_by_kind(e, code):
    assert cli.exit_code(e) == code
