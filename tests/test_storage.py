"""Object storage end to end, on an S3-compatible server on loopback: every stage reads and writes URIs through
pyarrow, a model on the bucket is fetched once per node and version, and credentials never reach the output."""

import json
import os
from pathlib import Path

import pytest
import requests

from sam import locations, storage
from sam.cli import main
from sam.predict import Predictor
from sam.runtimes import ModelDirError
from tests.helpers import best_rank_geometry, free_port, tweet_rows, write_jsonl

TINY = ["--num-layers", "1", "--num-heads", "2", "--d-model", "32", "--d-ff", "64", "--max-length", "32",
        "--vocab-size", "200", "--batch-size", "8", "--warmup-steps", "2", "--lr", "3e-3", "--val-fraction", "0.2"]


def test_credentials_in_a_uri_are_never_shown():
    assert storage.redact("s3://AKIDEXAMPLE:wJalrXUtnFEMI@bucket/models/m1") == "s3://***@bucket/models/m1"
    assert storage.redact("s3://bucket/m?region=eu-west-1&secret_key=abc&access_key=AK") == \
        "s3://bucket/m?region=eu-west-1&secret_key=***&access_key=***"
    assert storage.redact("/home/me/models/latest") == "/home/me/models/latest"


def test_uris_stay_uris_and_local_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.resolve("s3://b/runs/") == "s3://b/runs"
    assert storage.resolve("models/m1") == str(tmp_path / "models" / "m1")
    assert storage.join("s3://b/runs", "x") == "s3://b/runs/x" and storage.join("runs", "x") == str(tmp_path / "runs" / "x")
    assert storage.ray_data_path("s3://b/pred") == "s3://b/pred"
    assert storage.ray_data_path("pred") == f"local://{tmp_path / 'pred'}"  # written whole where the command runs


@pytest.fixture(scope="module")
def bucket_data(s3, tmp_path_factory):
    """Tweets on the bucket: a train file with a few unusable rows, and a test file."""
    local = tmp_path_factory.mktemp("bucket_data")
    rows = [json.dumps(row) for row in tweet_rows() * 2]
    (local / "train.jsonl").write_text("\n".join(rows[:10] + ['{"text": "   ", "label": 1}', "not json"] + rows[10:]) + "\n")
    write_jsonl(local / "test.jsonl", tweet_rows())
    storage.upload_dir(local, s3.uri("data"))
    return s3.uri("data")


@pytest.fixture(scope="module")
def bucket_model(ray_session, s3, bucket_data, tmp_path_factory):
    """`sam train` with its checkpoints and its export on the bucket, run from a folder that must stay empty."""
    cwd = tmp_path_factory.mktemp("cwd")
    os.chdir(cwd)
    try:
        assert main(["train", "--data", bucket_data, "--storage", s3.uri("runs"), "--name", "m1", "--output",
                     s3.uri("models/m1"), "--epochs", "2", *TINY]) == 0
    finally:
        os.chdir(Path(__file__).parent)
    assert list(cwd.iterdir()) == []  # no local folder named after the URI
    return s3.uri("models/m1")


@pytest.mark.slow
def test_train_checkpoints_and_exports_to_the_bucket(s3, bucket_model):
    exported = s3.files(bucket_model)
    assert {"config.json", "model.safetensors", "sam_config.json", "metrics.json", "tokenizer.json", "onnx/model.onnx",
            "onnx/model_int8.onnx"} <= set(exported)
    assert "training_state.pt" not in exported
    checkpoints = [f for f in s3.files(s3.uri("runs/m1")) if f.endswith("model.safetensors")]
    assert checkpoints, "no checkpoint on the bucket"
    assert json.loads(storage.read_text(storage.join(bucket_model, "metrics.json")))["epochs_run"] == 2


@pytest.mark.slow
def test_a_model_on_the_bucket_is_fetched_once_per_version(s3, bucket_model, tmp_path):
    first = locations.local_model_dir(bucket_model)
    inode = first.stat().st_ino
    assert locations.local_model_dir(bucket_model) == first and first.stat().st_ino == inode  # cached: not fetched again
    copy = s3.uri("models/m1_copy")
    storage.upload_dir(first, copy)
    metrics = json.loads((first / "metrics.json").read_text())
    storage.write_text(storage.join(copy, "metrics.json"), json.dumps({**metrics, "note": "changed"}))
    changed = locations.local_model_dir(copy)
    assert changed != first and json.loads((changed / "metrics.json").read_text())["note"] == "changed"
    with pytest.raises(ModelDirError, match="no such model directory"):
        Predictor(s3.uri("models/none"))


@pytest.mark.slow
def test_export_onnx_adds_its_files_to_a_model_on_the_bucket(s3, bucket_model, bucket_data, tmp_path, capsys):
    import shutil

    older = s3.uri("models/m1_older")  # as exported before models carried ONNX files
    storage.upload_dir(shutil.copytree(locations.local_model_dir(bucket_model), tmp_path / "older", ignore=shutil.ignore_patterns("onnx")), older)
    assert main(["export-onnx", older, "--data", bucket_data]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"onnx/model.onnx", "onnx/model_int8.onnx"} <= set(s3.files(older)) and figures["check_rows"] == 90
    assert json.loads(storage.read_text(storage.join(older, "metrics.json")))["onnx"] == figures


@pytest.mark.slow
def test_evaluate_and_predict_read_the_model_and_write_to_the_bucket(s3, bucket_model, bucket_data, capsys):
    assert main(["evaluate", "--model", bucket_model, "--data", bucket_data, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 45
    output = s3.uri("pred")
    assert main(["predict", "--model", bucket_model, "--data", bucket_data, "--output", output, "--format", "jsonl"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 90 and summary["rejected"] == {"blank text": 1, "not JSON": 1}
    fs, inner = storage.filesystem(output)
    lines = []
    for info in storage.listing(output):
        with fs.open_input_stream(info.path) as stream:
            lines += [json.loads(line) for line in stream.read().decode().splitlines()]
    predicted = [line for line in lines if "sentiment" in line]
    rejected = [line for line in lines if "problem" in line]
    assert len(predicted) == 90 and sorted(r["where"] for r in rejected) == ["train.jsonl:11", "train.jsonl:12"]


@pytest.mark.slow
def test_serve_loads_the_model_from_the_bucket_and_a_restart_uses_the_cache(s3, bucket_model):
    from ray import serve

    from sam.serve import ServeArgs, build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        for start in range(2):
            serve.run(build_app(ServeArgs(model_dir=bucket_model)), name="sam")
            if start == 0:
                cached = locations.local_model_dir(bucket_model)
                inode = cached.stat().st_ino
            response = requests.post(f"http://127.0.0.1:{port}/predict", json={"text": "I love it"}, timeout=30)
            assert response.status_code == 200 and response.json()["sentiment"] in ("Negative", "Neutral", "Positive")
            assert requests.get(f"http://127.0.0.1:{port}/model", timeout=30).json()["model_dir"] == bucket_model
            serve.delete("sam")
        assert cached.stat().st_ino == inode  # the second start found the node's copy
    finally:
        serve.shutdown()


@pytest.mark.slow
def test_tune_exports_its_best_trial_to_the_bucket(remove_new_placement_groups, s3, bucket_data, capsys):
    assert main(["tune", "--data", bucket_data, "--storage", s3.uri("search"), "--name", "s1", "--output",
                 s3.uri("models/best"), "--num-samples", "2", "--epochs", "1", *TINY]) == 0
    exported = s3.files(s3.uri("models/best"))
    assert {"model.safetensors", "sam_config.json", "search_results.json", "learning_curves.png"} <= set(exported)


@pytest.mark.slow
def test_distill_keeps_its_transfer_set_on_the_bucket(s3, bucket_model, bucket_data, capsys):
    transfer = s3.uri("transfer/t1")
    assert main(["distill", "--teacher", bucket_model, "--data", bucket_data, "--storage", s3.uri("runs"), "--transfer",
                 transfer, "--output", s3.uri("models/student"), "--augment", "1", "--epochs", "1", "--embedding-size", "16",
                 *TINY]) == 0  # the default student: the teacher's layers, tokenizer and embeddings, fetched from the bucket
    manifest = json.loads(storage.read_text(storage.join(transfer, "manifest.json")))
    assert manifest["rows"] == 2 * 72 and any(f.endswith(".parquet") for f in s3.files(transfer))
    assert "model.safetensors" in s3.files(s3.uri("models/student"))


@pytest.mark.slow
def test_a_reused_name_is_refused_unless_resumed_with_the_same_config(s3, bucket_model, bucket_data, capsys):
    command = ["train", "--data", bucket_data, "--storage", s3.uri("runs"), "--name", "m1", "--output", s3.uri("models/m1"),
               "--epochs", "2", *TINY]
    assert main(command) == 2
    assert "run 'm1' exists" in capsys.readouterr().err
    assert main([*command, "--resume", "--lr", "1e-3"]) == 2
    assert "lr: 0.003 -> 0.001" in capsys.readouterr().err
    assert main(["train", "--data", bucket_data, "--storage", s3.uri("runs"), "--name", "none", "--resume", *TINY]) == 2
    assert "no run 'none'" in capsys.readouterr().err


@pytest.mark.slow
def test_credentials_given_in_uris_stay_out_of_the_output(s3, bucket_model, bucket_data, capfd):
    secret = "sEcReT-never-shown"
    with_keys = lambda uri: uri.replace("s3://", f"s3://testing:{secret}@")
    assert main(["predict", "--model", with_keys(bucket_model), "--data", with_keys(bucket_data),
                 "--output", with_keys(s3.uri("pred_keys"))]) == 0
    out, err = capfd.readouterr()
    assert secret not in out and secret not in err
    assert json.loads(out.strip().splitlines()[-1])["predictions"] == "s3://***@sam-test/pred_keys/predictions"


@pytest.mark.slow
def test_a_tokenizer_and_starting_embeddings_come_from_a_model_on_the_bucket(s3, bucket_model):
    """`--tokenizer`, `--init` and `--init-embeddings` take a model on object storage: each node fetches it into its
    cache, as every worker of a cluster must, instead of reading the URI as a local path."""
    import torch
    from transformers import AutoModel

    from sam.config import ModelConfig
    from sam.models import build_model, start_from_embeddings
    from sam.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(bucket_model)
    local = locations.local_model_dir(bucket_model)
    assert tokenizer.get_vocab() == load_tokenizer(str(local)).get_vocab()
    student = build_model(ModelConfig(num_layers=1, num_heads=2, d_model=32, d_ff=64, max_length=32, arch="albert", embedding_size=8), tokenizer)
    start_from_embeddings(student, bucket_model)
    started = student.get_input_embeddings().weight.detach()
    teacher = AutoModel.from_pretrained(local).get_input_embeddings().weight.detach()
    torch.testing.assert_close(started @ started.T, best_rank_geometry(teacher, 8), atol=1e-4, rtol=1e-4)
