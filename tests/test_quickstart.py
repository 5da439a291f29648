"""The README's quick start with no paths given: train writes the default model directory, evaluate and Serve
read it, and /predict answers."""

import json

import pytest
import requests

from sam.cli import main
from sam.config import DEFAULT_MODEL_DIR
from tests.helpers import TINY_OPTIONS, free_port

TINY = [*TINY_OPTIONS, "--epochs", "1"]


@pytest.mark.slow
def test_train_evaluate_serve_predict_with_no_path_given(ray_session, tweets_dir, tmp_path, monkeypatch, capsys):
    from ray import serve

    from sam.serve import ServeArgs, build_app

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", str(tweets_dir), "--storage", str(tmp_path / "runs"), *TINY]) == 0
    assert (tmp_path / DEFAULT_MODEL_DIR / "model.safetensors").is_file()
    assert main(["evaluate", "--data", str(tweets_dir), "--split", "validation", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 18  # 20 % of the 90 fixture rows

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(ServeArgs()), name="quickstart")
        response = requests.post(f"http://127.0.0.1:{port}/predict", json={"text": "I love the new features in this app!"}, timeout=60)
        assert response.status_code == 200
        assert set(response.json()) == {"sentiment", "label", "confidence", "scores", "model"}
        model = requests.get(f"http://127.0.0.1:{port}/model", timeout=60).json()
        assert model["model_dir"] == response.json()["model"] == str(tmp_path / DEFAULT_MODEL_DIR)
    finally:
        serve.shutdown()
