"""bench/gpu_check.py as it is run on a bare GPU machine: a script, the project not installed, no Ray."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "bench/gpu_check.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would really run")
def test_without_cuda_it_skips_in_one_line():
    done = gpu_check("--data", "/nonexistent")  # skips before reading anything
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and "skipped: no CUDA device" in done.stdout


def test_cpu_smoke_run_trains_infers_and_stays_ray_free(tweets_dir):
    done = gpu_check("--device", "cpu", "--quick", "--data", str(tweets_dir), "--epochs", "10")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["loss_falls"] and not result["ray_imported"]
    assert set(result["inference_texts_per_s"]) == {"1", "32", "256"} and result["train_samples_per_s"]["fp32"] > 0
    assert "samples/s" in done.stdout and "texts/s" in done.stdout  # the readable table above the JSON
