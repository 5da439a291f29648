"""`serve deploy serve_config.yaml` on a local Ray with its dashboard, as users deploy: the one Serve config
answers, and a bad value in it is one clear error at deploy, never a replica retried.

A Ray of its own (with the dashboard, which `serve deploy` talks to), so the `multinode` mark runs it last."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from tests.helpers import ROOT, free_port, local_cluster


pytestmark = [pytest.mark.slow, pytest.mark.multinode]


SERVE_PORT = free_port()  # one Serve instance for the module: its HTTP port is fixed when it starts


@pytest.fixture(scope="module")
def dashboard(s3):
    port = free_port()
    with local_cluster(head={"num_cpus": 2, "include_dashboard": True, "dashboard_port": port}, workers=[]):
        yield f"http://127.0.0.1:{port}"


def deploy(dashboard: str, tmp_path: Path, model_dir: Path, args: dict | None = None, deployments: list | None = None) -> int:
    """serve_config.yaml as shipped, with this test's model, the module's port and `args` changed; returns the port."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = SERVE_PORT
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"] |= {"model_dir": str(model_dir), **(args or {})}
    app["runtime_env"] = {"env_vars": {"PYTHONPATH": str(ROOT)}}  # serve_app:app, as from the repository's root
    if deployments:
        app["deployments"] = deployments
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([str(Path(sys.executable).with_name("serve")), "deploy", str(path), "--address", dashboard],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return port


def application(dashboard: str, until) -> dict:
    """`serve status` of the app (it carries Ray's auth token, which the dashboard's REST API asks for) until `until`."""
    deadline = time.time() + 180
    while True:
        status = subprocess.run([str(Path(sys.executable).with_name("serve")), "status", "--address", dashboard],
                                capture_output=True, text=True, timeout=60)
        app = (yaml.safe_load(status.stdout) or {}).get("applications", {}).get("sam", {}) if status.returncode == 0 else {}
        if until(app) or time.time() > deadline:
            return app
        time.sleep(1)


def test_the_shipped_config_deploys_and_answers(dashboard, tiny_model_dir, tmp_path):
    port = deploy(dashboard, tmp_path, tiny_model_dir)
    app = application(dashboard, lambda a: a.get("status") in ("RUNNING", "DEPLOY_FAILED"))
    assert app["status"] == "RUNNING", app.get("message")
    answer = requests.post(f"http://127.0.0.1:{port}/predict", json={"text": "I love the new features in this app!"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["sentiment"] in {"Negative", "Neutral", "Positive"}
    batching = requests.get(f"http://127.0.0.1:{port}/model", timeout=60).json()["batching"]
    assert (batching["max_batch_size"], batching["batch_wait_timeout_s"]) == (32, 0.005)


def test_a_partial_user_config_keeps_the_other_defaults(dashboard, tiny_model_dir, tmp_path):
    port = deploy(dashboard, tmp_path, tiny_model_dir, deployments=[{"name": "Sentiment", "user_config": {"max_batch_size": 4}}])
    app = application(dashboard, lambda a: a.get("status") in ("RUNNING", "DEPLOY_FAILED")
                      and requests.get(f"http://127.0.0.1:{port}/model", timeout=10).ok)
    assert app["status"] == "RUNNING", app.get("message")
    batching = requests.get(f"http://127.0.0.1:{port}/model", timeout=60).json()["batching"]
    assert (batching["max_batch_size"], batching["batch_wait_timeout_s"]) == (4, 0.005)


def test_a_bad_value_fails_the_deploy_with_its_message(dashboard, tiny_model_dir, tmp_path):
    """One of ServeArgs' refusals (test_serve has each) through a real deploy."""
    deploy(dashboard, tmp_path, tiny_model_dir, args={"max_ongoing_requests": 4})
    app = application(dashboard, lambda a: a.get("status") == "DEPLOY_FAILED")
    assert app["status"] == "DEPLOY_FAILED"
    assert "max_ongoing_requests (4) < max_batch_size (32) caps every batch" in app["message"]  # the knob is named
    assert not app.get("deployments")  # no replica was ever started, so none is retried


def test_a_bad_user_config_override_names_the_knob(dashboard, tiny_model_dir, tmp_path):
    deploy(dashboard, tmp_path, tiny_model_dir, deployments=[{"name": "Sentiment", "user_config": {"max_batch_size": "many"}}])
    app = application(dashboard, lambda a: a.get("status") == "DEPLOY_FAILED")
    assert app["status"] == "DEPLOY_FAILED"
    message = app["deployments"]["Sentiment"]["message"]
    assert "max_batch_size" in message and "valid integer" in message
