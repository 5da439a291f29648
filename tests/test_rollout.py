"""`sam rollout`: its steps, its checks (each failure names itself with its figure and limit), the config file
naming the promoted champion with its comments kept; and, slow, the README's deploy commands run as written in a
shell against `ray start --head` (token authentication on), then rollouts under load: one promoted, one rolled
back, neither failing a request."""

import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from sam import SamError
from sam.rollout import Checks, judge, model_readings, name_champion, parse_steps, promoted_args
from tests.helpers import POSITIVE, ROOT, free_port, own_ray_env, stop_ray_started_in

# The README's deploy line, as a user copies it
README_DEPLOY = re.search(r"`(ray start --head && [^`]*serve deploy serve_config\.yaml)`", (ROOT / "README.md").read_text())[1]
RAY_START_GCS_PORT = 6379  # `ray start --head`'s default

FIGURES = {"requests": 200, "errors": 0, "error_rate": 0.0, "p50_ms": 4.0, "p99_ms": 19.03, "agreement": 0.9}


def test_steps_rise_to_at_most_100_with_an_optional_shadow_first():
    assert parse_steps("shadow,5,25,50,100") == ["shadow", 5, 25, 50, 100]
    for bad in ("5,5", "50,25", "0,10", "10,150", "ten"):
        with pytest.raises(SamError, match="--steps"):
            parse_steps(bad)


@pytest.mark.parametrize("change, checks, named", [
    ({}, Checks(), None),
    ({"requests": 3}, Checks(), "min-requests: 3 answers < 10"),
    ({"errors": 4, "error_rate": 0.02}, Checks(), "max-error-rate: 2.00% > 1.00%"),
    ({}, Checks(max_p99_ms=10), "max-p99-ms: p99 19.03 ms > 10 ms"),
    ({}, Checks(min_agreement=0.95), "min-agreement: 90.0% < 95.0%"),
    ({"agreement": None}, Checks(min_agreement=0.95), None),  # no shadow traffic in a split step: nothing to judge
])
def test_each_failed_check_is_named_with_its_figure_and_limit(change, checks, named):
    assert judge({**FIGURES, **change}, checks) == named


def test_an_app_that_does_not_answer_is_one_line_naming_its_address():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SamError, match=f"no SAM app answers at {url}/model \\(ConnectionError\\): deploy it first, or give --url"):
        model_readings(url, 1)


def test_the_config_names_the_promoted_champion_and_keeps_its_comments(tmp_path):
    shipped = (tmp_path / "serve_config.yaml")
    shipped.write_text("applications:\n- name: sam\n  import_path: serve_app:app\n  args:\n"
                       "    model_dir: models/old   # the champion\n    quantize: false\n")
    name_champion(shipped, {"name": "sam"}, "models/old", "/models/new")
    assert "    model_dir: /models/new   # the champion\n" in shipped.read_text()
    assert yaml.safe_load(shipped.read_text())["applications"][0]["args"] == {"model_dir": "/models/new", "quantize": False}


def test_promotion_moves_a_registered_champions_alias_and_names_any_other_challenger(tiny_model_dir, tracking):
    run_id = tracking.start("rollout", {}, {})
    tracking.log_model(run_id, str(tiny_model_dir))
    first, second = (tracking.register(run_id, "sentiment").rsplit("/", 1)[1] for _ in range(2))
    tracking.client.set_registered_model_alias("sentiment", "champion", first)
    base = {"model_dir": "models:/sentiment@champion", "quantize": False}
    assert promoted_args(base, f"models:/sentiment/{second}", say=lambda line: None) == base
    assert str(tracking.client.get_model_version_by_alias("sentiment", "champion").version) == second
    assert promoted_args(base, "/models/other") == {**base, "model_dir": "/models/other"}


@dataclass
class Started:
    directory: Path  # holds serve_config.yaml, where the README's commands ran
    url: str
    env: dict

    def rollout_under_load(self, clients: int, *args: str) -> tuple[subprocess.CompletedProcess, "Load"]:
        """`sam rollout ARGS` while `clients` post tweets, and what they got."""
        load = Load(self.url, clients)
        try:
            return self.rollout(*args), load
        finally:
            load.stop()

    def rollout(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sam.cli", "rollout", "--config", "serve_config.yaml", *args],
                              cwd=self.directory, env=self.env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def started(tiny_model_dir, tmp_path_factory):
    """serve_config.yaml as shipped (this test's model and a free HTTP port; serve_app importable), deployed by the
    README's line in a shell, with Ray's default ports and a temp dir of its own."""
    directory = tmp_path_factory.mktemp("deploy")
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = config["http_options"]["port"] = free_port()
    app = config["applications"][0]
    app["args"] |= {"model_dir": str(tiny_model_dir), "num_cpus": 0.5}
    app["runtime_env"] = {"env_vars": {"PYTHONPATH": str(ROOT)}}
    (directory / "serve_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    temp_dir = tempfile.mkdtemp(prefix="samray-", dir="/tmp")
    env = own_ray_env(RAY_TMPDIR=temp_dir, PYTHONPATH=str(ROOT))
    try:
        done = subprocess.run(["bash", "-c", README_DEPLOY], cwd=directory, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
        while time.monotonic() < deadline and not _answers(url):
            time.sleep(1)
        yield Started(directory, url, env)
    finally:
        stop_ray_started_in(temp_dir, RAY_START_GCS_PORT)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        return requests.post(f"{url}/predict", json={"text": POSITIVE[0]}, timeout=10).ok
    except requests.RequestException:
        return False


class Load:
    """Clients posting one tweet after another until stopped, counting answers per model and every failure."""

    def __init__(self, url: str, clients: int):
        self.url, self.models, self.failed, self.stopped = url, Counter(), [], threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self, number: int) -> None:
        session, sent = requests.Session(), 0
        while not self.stopped.is_set():
            sent += 1
            try:
                answer = session.post(f"{self.url}/predict", json={"text": f"{POSITIVE[0]} {number} {sent}"}, timeout=60)
                if answer.ok:
                    self.models[answer.headers["X-SAM-Model"]] += 1
                else:
                    self.failed.append(f"HTTP {answer.status_code}: {answer.text[:200]}")
            except requests.RequestException as error:
                self.failed.append(repr(error)[:200])

    def stop(self) -> "Load":
        self.stopped.set()
        for thread in self.threads:
            thread.join()
        return self


@pytest.mark.slow
def test_the_readmes_deploy_commands_answer_and_a_rollout_without_the_token_says_what_to_do(started, tmp_path):
    answer = requests.post(f"{started.url}/predict", json={"text": POSITIVE[0]}, timeout=30)
    assert answer.status_code == 200 and answer.headers["X-SAM-Model"] == answer.json()["model"]
    elsewhere = {**started.env, "HOME": str(tmp_path)}  # a machine without the head node's ~/.ray/auth_token
    done = subprocess.run([sys.executable, "-m", "sam.cli", "rollout", "--config", "serve_config.yaml", "--challenger", "x"],
                          cwd=started.directory, env=elsewhere, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "RAY_AUTH_TOKEN" in done.stderr, done.stderr


@pytest.mark.slow
def test_a_rollout_under_load_is_promoted_without_a_failed_request(started, tiny_model_dir, tmp_path):
    challenger = shutil.copytree(tiny_model_dir, tmp_path / "challenger")
    done, load = started.rollout_under_load(32, "--challenger", str(challenger), "--steps", "shadow,5,50,100", "--hold", "4s",
                                            "--min-agreement", "0.99")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["result"] == "promoted" and summary["champion"] == str(challenger)
    assert [step["step"] for step in summary["steps"]] == ["shadow", "5%", "50%", "100%"]
    assert summary["steps"][0]["challenger"]["agreement"] == 1.0  # the same weights
    assert load.failed == [] and set(load.models) == {str(tiny_model_dir), str(challenger)}
    assert yaml.safe_load((started.directory / "serve_config.yaml").read_text())["applications"][0]["args"]["model_dir"] == str(challenger)
    assert requests.get(f"{started.url}/model", timeout=30).json()["model"] == str(challenger)


@pytest.mark.slow
def test_a_challenger_failing_a_check_is_rolled_back_and_the_command_names_the_check(started, tmp_path):
    champion = requests.get(f"{started.url}/model", timeout=30).json()["model"]
    challenger = shutil.copytree(champion, tmp_path / "slow-challenger")
    done, load = started.rollout_under_load(32, "--challenger", str(challenger), "--steps", "20,100", "--hold", "3s", "--max-p99-ms", "0.5")
    assert done.returncode == 1 and "rolled back: step 1 (20%): max-p99-ms: p99 " in done.stderr, done.stdout + done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["result"] == "rolled_back"
    assert load.failed == [] and set(load.models) <= {champion, str(challenger)}
    info = requests.get(f"{started.url}/model", timeout=30).json()
    assert info["model"] == champion and info["challenger"] is None
