"""bench/gpu_ray_check.py on CPU: its plan is valid for today's CLI, and its summary reads each step's figures."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import gpu_ray_check  # noqa: E402


def test_dry_run_prints_every_step_and_each_command_parses(tmp_path, capsys):
    assert gpu_ray_check.main([str(tmp_path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "train_fp32", "train_bf16", "two_workers_one_gpu", "search_1_gpu", "search_0.5_gpu", "search_0.25_gpu", "runtime_on_gpu",
        "serving"]
    assert "--gpus-per-worker 0.5" in lines[2] and "-m tests.faults 70 train" in lines[2]
    assert "--gpus-per-trial 0.25" in lines[5] and "--gpus-per-actor 1" in lines[6] and "--device cuda" in lines[7]


def test_a_renamed_flag_fails_the_plan_before_any_gpu_time():
    step = gpu_ray_check.Step("bad", [*gpu_ray_check.SAM, "train", "--max-epochs", "2"])
    with pytest.raises(SystemExit):
        gpu_ray_check.check_parses([step])


def test_figures_come_from_the_exported_metrics_and_the_search_wall_time(tmp_path):
    (tmp_path / "model_2w").mkdir()
    history = [{"samples_per_s": 3000.4, "restored_from_epoch": 0}, {"samples_per_s": 2900.0, "restored_from_epoch": 1}]
    (tmp_path / "model_2w" / "metrics.json").write_text(json.dumps({"val_accuracy": 0.74, "history": history}))
    two = gpu_ray_check.figures({"step": "two_workers_one_gpu", "wall_s": 60, "output": {}}, tmp_path)
    assert two == {"val_accuracy": 0.74, "epochs": 2, "samples_per_s": [3000, 2900], "restored_from_epoch": [0, 1]}
    search = gpu_ray_check.figures({"step": "search_0.25_gpu", "wall_s": 120, "output": {"val_accuracy": 0.7}}, tmp_path)
    assert search == {"trials_per_hour": 120.0, "best_val_accuracy": 0.7}
    table = gpu_ray_check.markdown([{"step": "search_0.25_gpu", "returncode": 0, "wall_s": 120, "figures": search}], "H200")
    assert "| search_0.25_gpu | 0 | 120 |" in table
