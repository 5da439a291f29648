"""What a person sees: a progress bar per epoch on a terminal, plain lines when piped, Ray's own chatter only with
--verbose. The commands run as users run them, in a process (and a pseudo-terminal) of their own."""

import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pexpect
import pytest

from sam.console import EpochProgress, ProgressSettings
from tests.helpers import ROOT, TINY_OPTIONS, own_ray_env

# Ray's and the libraries' lines that stay in Ray's log files unless --verbose.
RAY_LINES = ("Starting execution of Dataset", "Execution plan of Dataset", "Requesting resources", "Reporting training result",
             "Token authentication", "Started a local Ray instance", "Progress bars disabled", "Setting up process group",
             "Checkpoint successfully created", "DeprecationWarning", "Writing model shards")


def sam_train(tweets_dir, tmp_path, *extra, command="train") -> list[str]:
    return [sys.executable, "-m", "sam.cli", command, "--data", str(tweets_dir), *TINY_OPTIONS, "--epochs", "2",
            "--output", str(tmp_path / "model"), "--storage", str(tmp_path / "runs"), *extra]


def in_pipe(command: list[str], **env) -> tuple[int, str]:
    """What a command prints into a pipe (`| tee`, CI), stdout and stderr together."""
    done = subprocess.run(command, cwd=ROOT, env=own_ray_env(**env), capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def on_terminal(command: list[str]) -> tuple[int, str]:
    child = pexpect.spawn(command[0], command[1:], cwd=str(ROOT), env=own_ray_env(), encoding="utf-8", timeout=600,
                          dimensions=(50, 160))
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before


@pytest.fixture(scope="module")
def commands(tweets_dir, tiny_model_dir, tmp_path_factory):
    """The module's commands, started together: each spends most of its wall time waiting on Ray and Train to
    start, so together they take little longer than the slowest alone. Each test reads its own result."""
    tmp = tmp_path_factory.mktemp("console")
    plain = {"SAM_PROGRESS_INTERVAL_S": "0"}
    runs = {
        "terminal": (on_terminal, sam_train(tweets_dir, tmp / "terminal")),
        "piped": (partial(in_pipe, **plain), sam_train(tweets_dir, tmp / "piped")),
        "verbose": (in_pipe, sam_train(tweets_dir, tmp / "verbose", "--verbose", "--epochs", "1")),
        "distill": (partial(in_pipe, **plain), sam_train(tweets_dir, tmp / "distill", "--teacher", str(tiny_model_dir),
                                                         "--augment", "1", "--embedding-size", "16", command="distill")),
        "tune": (partial(in_pipe, **plain), sam_train(tweets_dir, tmp / "tune", "--num-samples", "1", command="tune")),
    }
    with ThreadPoolExecutor(len(runs)) as pool:
        yield {name: pool.submit(run, command) for name, (run, command) in runs.items()}


def plain_lines(result: tuple[int, str]) -> str:
    """A piped command succeeds, with no bar redraws and no terminal codes."""
    returncode, output = result
    assert returncode == 0, output[-3000:]
    assert "\r" not in output and "\x1b" not in output, [line for line in output.split("\n") if "\r" in line or "\x1b" in line][:5]
    return output


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


@pytest.mark.slow
def test_a_terminal_shows_a_progress_bar_and_no_ray_internals(commands):
    exitstatus, screen = commands["terminal"].result()
    assert exitstatus == 0, screen[-3000:]
    assert "epoch 1/2" in screen and "step/s]" in screen and "%|" in screen  # tqdm's bar: steps, rate, time left
    assert "epoch 2/2: train loss" in screen and '"val_accuracy"' in screen
    assert not [line for line in RAY_LINES if line in screen]


@pytest.mark.slow
def test_piped_output_is_plain_lines_and_verbose_brings_ray_back(commands):
    output = plain_lines(commands["piped"].result())
    assert "epoch 1/2: step 1/" in output and "epoch 2/2: train loss" in output
    assert not [line for line in RAY_LINES if line in output]

    returncode, output = commands["verbose"].result()
    assert returncode == 0, output[-3000:]
    assert "Execution plan of Dataset" in output and "Requesting resources" in output


@pytest.mark.slow
def test_piped_distill_prints_plain_lines_while_its_teacher_scores_and_its_student_trains(commands):
    output = plain_lines(commands["distill"].result())
    assert "scoring the transfer set" in output and "epoch 2/2: train loss" in output


@pytest.mark.slow
def test_piped_tune_prints_plain_lines(commands):
    output = plain_lines(commands["tune"].result())
    assert "epoch 2/2: train loss" in output and '"val_accuracy"' in output
