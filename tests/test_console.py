"""What a person sees: a progress bar per epoch on a terminal, plain lines when piped, Ray's own chatter only with
--verbose. The commands run as users run them, in a process (and a pseudo-terminal) of their own."""

import logging
import subprocess
import sys
from pathlib import Path

import pexpect

from sam.console import EpochProgress, ProgressSettings
from tests.conftest import own_ray_env
from tests.test_tune import TINY_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
# Ray's and the libraries' lines that stay in Ray's log files unless --verbose.
RAY_LINES = ("Starting execution of Dataset", "Execution plan of Dataset", "Requesting resources", "Reporting training result",
             "Token authentication", "Started a local Ray instance", "Progress bars disabled", "Setting up process group",
             "Checkpoint successfully created", "DeprecationWarning", "Writing model shards")


def sam_train(tweets_dir, tmp_path, *extra) -> list[str]:
    return [sys.executable, "-m", "sam.cli", "train", "--data", str(tweets_dir), *TINY_OPTIONS, "--epochs", "2",
            "--output", str(tmp_path / "model"), "--storage", str(tmp_path / "runs"), *extra]


def test_plain_progress_lines_come_at_the_interval(caplog):
    progress = EpochProgress(1, 2, total_steps=10, settings=ProgressSettings(interactive=False, interval_s=0.0, verbose=False))
    with caplog.at_level(logging.INFO, logger="sam"):
        for step in range(1, 4):
            progress.update(step, samples=8 * step, loss=lambda: 1.0986)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 3 and lines[2].startswith("epoch 1/2: step 3/10 (30%), loss 1.0986, ") and lines[2].endswith(" left")
    quiet = EpochProgress(1, 2, total_steps=10, settings=ProgressSettings(interactive=False, interval_s=3600.0, verbose=False))
    caplog.clear()
    quiet.update(1, samples=8, loss=lambda: 1.0)
    assert not caplog.records  # not due yet


def test_a_terminal_shows_a_progress_bar_and_no_ray_internals(tweets_dir, tmp_path):
    child = pexpect.spawn(sam_train(tweets_dir, tmp_path)[0], sam_train(tweets_dir, tmp_path)[1:], cwd=str(ROOT),
                          env=own_ray_env(), encoding="utf-8", timeout=600, dimensions=(50, 160))
    child.expect(pexpect.EOF)
    child.close()
    screen = child.before
    assert child.exitstatus == 0, screen[-3000:]
    assert "epoch 1/2" in screen and "step/s]" in screen and "%|" in screen  # tqdm's bar: steps, rate, time left
    assert "epoch 2/2: train loss" in screen and '"val_accuracy"' in screen
    assert not [line for line in RAY_LINES if line in screen]


def test_piped_output_is_plain_lines_and_verbose_brings_ray_back(tweets_dir, tmp_path):
    piped = subprocess.run(sam_train(tweets_dir, tmp_path), cwd=ROOT, env=own_ray_env(SAM_PROGRESS_INTERVAL_S="0"),
                           capture_output=True, text=True, timeout=600)
    output = piped.stdout + piped.stderr
    assert piped.returncode == 0, output[-3000:]
    assert "\r" not in output and "\x1b" not in output  # no bar redraws, no colours
    assert "epoch 1/2: step 1/" in output and "epoch 2/2: train loss" in output
    assert not [line for line in RAY_LINES if line in output]

    verbose = subprocess.run(sam_train(tweets_dir, tmp_path / "verbose", "--verbose", "--epochs", "1"), cwd=ROOT,
                             env=own_ray_env(), capture_output=True, text=True, timeout=600)
    output = verbose.stdout + verbose.stderr
    assert verbose.returncode == 0, output[-3000:]
    assert "Execution plan of Dataset" in output and "Requesting resources" in output
