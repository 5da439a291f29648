"""The checkpoint format's export: a clean model directory that replaces a previous model whole and refuses to
replace anything that is not one."""

import json

import pytest
import ray.train

from sam.checkpoint import PROGRESS_FILE, TRAINING_STATE_FILE, check_output, export
from sam.config import CONFIG_FILE, Config


def fake_checkpoint(directory, epochs=2):
    directory.mkdir()
    history = [{"val_accuracy": 0.5 + e / 10, "val_macro_f1": 0.5, "val_loss": 1.0} for e in range(epochs)]
    (directory / PROGRESS_FILE).write_text(json.dumps({"epoch": epochs, "peak_lr": 1e-3, "history": history}))
    (directory / TRAINING_STATE_FILE).write_bytes(b"state")
    (directory / "model.safetensors").write_bytes(b"weights")
    Config().save(directory)
    return ray.train.Checkpoint.from_directory(str(directory))


def test_export_writes_a_clean_directory_and_replaces_a_previous_model_whole(tmp_path):
    output = tmp_path / "models" / "latest"
    metrics = export(fake_checkpoint(tmp_path / "ckpt"), output, {"wall_s": 1.0})
    assert metrics["best_epoch"] == 2 and metrics["val_accuracy"] == pytest.approx(0.6)
    assert {p.name for p in output.iterdir()} == {"model.safetensors", CONFIG_FILE, "metrics.json"}
    (output / "stale.txt").write_text("from an older export")
    export(fake_checkpoint(tmp_path / "ckpt2", epochs=1), output, {})
    assert not (output / "stale.txt").exists() and json.loads((output / "metrics.json").read_text())["best_epoch"] == 1
    assert sorted(p.name for p in output.parent.iterdir()) == ["latest"]  # no staging or replaced copies left


def test_an_output_that_is_not_a_model_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("my notes")
    with pytest.raises(ValueError, match="is not a SAM model directory"):
        check_output(tmp_path)
    with pytest.raises(ValueError, match="is not a SAM model directory"):
        export(fake_checkpoint(tmp_path / "ckpt"), tmp_path, {})
    assert (tmp_path / "notes.txt").read_text() == "my notes"
    check_output(tmp_path / "new")  # absent, or empty: fine


def test_a_failed_export_keeps_the_previous_model_and_leaves_no_staging(tmp_path):
    output = tmp_path / "models" / "latest"
    export(fake_checkpoint(tmp_path / "ckpt"), output, {})

    def disk_full(directory):
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        export(fake_checkpoint(tmp_path / "ckpt2", epochs=1), output, {}, extras=disk_full)
    assert sorted(p.name for p in output.parent.iterdir()) == ["latest"]
    assert json.loads((output / "metrics.json").read_text())["best_epoch"] == 2  # the earlier export, whole
