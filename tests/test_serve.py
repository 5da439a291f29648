"""The Serve app over real HTTP: both request forms, batching, validation, info routes, bad model directories."""

import contextlib
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from pydantic import ValidationError

from sam import LABELS
from sam.encoding import MAX_TEXT_CHARS
from sam.runtimes import ModelDirError
from sam.api import MAX_BODY_BYTES, MAX_TEXTS
from sam.serve import SentimentDeployment, ServeArgs, build_app
from sam.traffic import routes_to_challenger
from tests.helpers import NEGATIVE, NEUTRAL, POSITIVE, ROOT, free_port, require

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's
DASHBOARD = ROOT / "deploy" / "grafana" / "sam-serve-dashboard.json"
TEXTS = [NEGATIVE[0], NEUTRAL[0], POSITIVE[0], "ok", "an unseen tweet with words the model never saw: zyxw"]


@pytest.fixture(scope="module")
def prediction_log(s3):
    return s3.uri("serve-log")


@pytest.fixture(scope="module")
def url(ray_session, tiny_model_dir, prediction_log):
    from ray import serve

    port = free_port()  # not 8000: other Serve instances may share this machine
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # A long wait makes concurrent requests meet in one batch whatever the machine's speed.
    serve.run(build_app(ServeArgs(model_dir=str(tiny_model_dir), max_batch_size=8, batch_wait_timeout_s=0.2,
                                  log_dir=prediction_log, log_flush_s=0.5)), name="sam")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def predict(url, payload, **kwargs):
    return requests.post(f"{url}/predict", json=payload, timeout=60, **kwargs)


def assert_prediction(prediction):
    assert prediction["sentiment"] == LABELS[prediction["label"]]
    assert set(prediction["scores"]) == set(LABELS)
    assert prediction["confidence"] == max(prediction["scores"].values())
    assert sum(prediction["scores"].values()) == pytest.approx(1.0, abs=1e-3)


def test_single_and_batch_forms_agree(url):
    singles = [predict(url, {"text": t}) for t in TEXTS]
    assert all(r.status_code == 200 for r in singles)
    batch = predict(url, {"texts": TEXTS})
    assert batch.status_code == 200
    predictions = batch.json()["predictions"]
    assert len(predictions) == len(TEXTS)
    for single, batched in zip(singles, predictions):
        assert_prediction(batched)
        assert single.json()["label"] == batched["label"]
        for name in LABELS:  # padding next to other texts may move the 4th decimal, never more
            assert single.json()["scores"][name] == pytest.approx(batched["scores"][name], abs=2e-3)


def test_concurrent_requests_are_batched(url):
    texts = (NEGATIVE + NEUTRAL + POSITIVE)[:32]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda t: predict(url, {"text": t}), texts))
    assert [r.status_code for r in responses] == [200] * len(texts)
    batching = requests.get(f"{url}/model", timeout=30).json()["batching"]
    assert batching["max_batch_size"] == 8
    assert max(batching["recent_batch_sizes"]) > 1
    assert max(batching["recent_batch_sizes"]) <= 8


def test_each_prediction_is_logged_to_the_bucket_with_its_request_id(url, prediction_log, tiny_model_dir):
    import pyarrow.dataset

    from sam.prediction_log import weights_hash
    from sam.storage import filesystem

    answered = predict(url, {"texts": ["logged one", "logged two"]}, headers={"X-Request-Id": "client-42"}).json()
    fs, root = filesystem(prediction_log)
    deadline, rows = time.monotonic() + 30, []
    while time.monotonic() < deadline and len(rows) < 2:
        time.sleep(0.5)
        rows = [row for row in pyarrow.dataset.dataset(root, filesystem=fs, format="parquet", partitioning="hive")
                .to_table().to_pylist() if row["request_id"] == "client-42"] if fs.get_file_info(root).type.name == "Directory" else []
    assert [row["text"] for row in rows] == ["logged one", "logged two"]
    for row, prediction in zip(rows, answered["predictions"]):
        assert (row["sentiment"], row["confidence"], row["scores"]) == (prediction["sentiment"], prediction["confidence"], prediction["scores"])
        assert row["model"] == str(tiny_model_dir) and row["model_hash"] == weights_hash(tiny_model_dir) and row["latency_ms"] > 0
    state = requests.get(f"{url}/model", timeout=30).json()["log"]
    assert state["log_dir"] == prediction_log and state["share"] == 1.0 and state["written"] >= 2 and state["dropped"] == 0


@pytest.mark.parametrize(
    "payload",
    [
        {},  # missing field
        {"txt": "typo"},
        {"text": ""},
        {"text": "   \n\t"},
        {"text": 42},
        {"text": ["a list"]},
        {"text": None},
        {"texts": None},
        {"text": "a", "texts": ["both"]},
        {"text": None, "texts": ["a"]},  # a null is not an absent key: the schema allows only one of the two
        {"text": "x" * (MAX_TEXT_CHARS + 1)},
        {"texts": []},
        {"texts": ["fine", ""]},
        {"texts": ["fine", 3]},
        {"texts": "not a list"},
        {"texts": ["a"] * (MAX_TEXTS + 1)},
        [],
        "just a string",
    ],
)
def test_invalid_requests_get_4xx_and_server_stays_up(url, payload):
    response = predict(url, payload)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["detail"]
    assert predict(url, {"text": "still answering?"}).status_code == 200


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"text": "unterminated', b'{"text": "\xff\xfe bad utf-8"}', b"", b"null"],
)
def test_malformed_bodies_get_4xx(url, body):
    response = requests.post(f"{url}/predict", data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert 400 <= response.status_code < 500, response.text
    assert predict(url, {"text": "still answering?"}).status_code == 200


def test_text_at_the_limit_is_accepted(url):
    assert predict(url, {"text": "a" * MAX_TEXT_CHARS}).status_code == 200
    assert predict(url, {"texts": ["b"] * MAX_TEXTS}).status_code == 200


def test_oversized_bodies_are_refused(url):
    big = json.dumps({"text": "x" * (MAX_BODY_BYTES + 10)}).encode()
    assert requests.post(f"{url}/predict", data=big, timeout=30).status_code == 413
    # Chunked, so no Content-Length: the limit must be counted while the body streams in.
    chunks = (b"x" * 65536 for _ in range(MAX_BODY_BYTES // 65536 + 2))
    assert requests.post(f"{url}/predict", data=chunks, timeout=30).status_code == 413
    assert predict(url, {"text": "still answering?"}).status_code == 200


def test_info_routes(url, tiny_model_dir):
    assert requests.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}
    info = requests.get(f"{url}/model", timeout=30).json()
    assert info["labels"] == list(LABELS)
    assert info["model_dir"] == str(tiny_model_dir.resolve())
    assert info["config"]["model"]["num_layers"] == 1
    assert "val_accuracy" in info["metrics"]
    assert info["runtime"] == "onnx" and info["quantized"] is False  # ONNX fp32: exact answers unless int8 is asked for
    assert requests.get(f"{url}/docs", timeout=30).status_code == 200
    assert "/predict" in requests.get(f"{url}/openapi.json", timeout=30).json()["paths"]


def test_bad_model_dir_fails_in_one_line(tmp_path):
    with pytest.raises(ModelDirError, match="no such model directory") as missing:
        build_app(ServeArgs(model_dir=str(tmp_path / "absent")))
    assert "\n" not in str(missing.value)
    with pytest.raises(ModelDirError, match="missing config.json"):
        build_app(ServeArgs(model_dir=str(tmp_path)))


def test_a_bad_challenger_dir_fails_in_one_line(tiny_model_dir, tmp_path):
    with pytest.raises(ModelDirError, match="^sam serve: challenger_dir: .*no such model directory$"):
        build_app(ServeArgs(model_dir=str(tiny_model_dir), challenger_dir=str(tmp_path / "absent")))


@pytest.fixture(scope="module")
def challenger_dir(tiny_model_dir, tmp_path_factory):
    """The same weights elsewhere: a second model whose answers name it."""
    import shutil

    return shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("challenger") / "model")


@contextlib.contextmanager
def deployed(name: str, **args):
    from ray import serve

    serve.run(build_app(ServeArgs(num_cpus=0.5, **args)), name=name, route_prefix=f"/{name}")
    try:
        yield
    finally:
        serve.delete(name)


@pytest.mark.slow
def test_split_sends_each_key_where_its_hash_does(url, tiny_model_dir, challenger_dir):
    keys = [f"key-{i}" for i in range(2000)]
    champion, challenger = str(tiny_model_dir), str(challenger_dir)
    with deployed("split", model_dir=champion, challenger_dir=challenger, challenger_share=0.25):
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda key: predict(f"{url}/split", {"text": POSITIVE[0]}, headers={"X-Request-Id": key}), keys))
        assert all(answer.status_code == 200 for answer in answers)
        models = [answer.headers["X-SAM-Model"] for answer in answers]
        assert models == [answer.json()["model"] for answer in answers]
        assert models == [challenger if routes_to_challenger(key, 0.25) else champion for key in keys]
        assert abs(models.count(challenger) / len(keys) - 0.25) < 0.05
        assert [predict(f"{url}/split", {"text": NEGATIVE[0]}, headers={"X-Request-Id": key}).headers["X-SAM-Model"]
                for key in keys[:50]] == models[:50]  # the same key, another text, the same model
        info = requests.get(f"{url}/split/model", timeout=30).json()
        assert (info["model"], info["challenger"]["model"], info["challenger"]["share"]) == (champion, challenger, 0.25)
        assert info["traffic"]["models"][challenger]["requests"] >= models.count(challenger)


@pytest.mark.slow
def test_shadow_answers_as_the_champion_alone_and_logs_the_challengers_answer_to_every_request(url, tiny_model_dir, challenger_dir, tmp_path):
    import pyarrow.dataset

    texts = TEXTS * 4
    with deployed("shadow", model_dir=str(tiny_model_dir), challenger_dir=str(challenger_dir), challenger_mode="shadow",
                  log_dir=str(tmp_path / "log"), log_flush_s=0.5):
        for i, text in enumerate(texts):
            answer = predict(f"{url}/shadow", {"text": text}, headers={"X-Request-Id": f"shadow-{i}"})
            assert answer.json() == predict(url, {"text": text}).json()  # the champion-only app's answer
            assert answer.headers["X-SAM-Model"] == str(tiny_model_dir)
        deadline, shadowed = time.monotonic() + 30, {}
        while time.monotonic() < deadline and len(shadowed) < len(texts):
            time.sleep(0.5)
            rows = pyarrow.dataset.dataset(str(tmp_path / "log"), format="parquet", partitioning="hive").to_table().to_pylist()
            shadowed = {row["request_id"]: row for row in rows if not row["served"]}
        assert set(shadowed) == {f"shadow-{i}" for i in range(len(texts))}
        assert {row["model"] for row in shadowed.values()} == {str(challenger_dir)}
        assert sum(row["served"] for row in rows) == len(texts)
        shadow = requests.get(f"{url}/shadow/model", timeout=30).json()["traffic"]["shadow"]
        assert shadow["compared"] == shadow["agreed"] == len(texts)  # the same weights agree on every text


def test_builder_args(monkeypatch, tmp_path):
    monkeypatch.setenv("SAM_MODEL_DIR", str(tmp_path))
    args = ServeArgs.model_validate({"max_batch_size": "16", "autoscaling_config": '{"min_replicas": 1, "max_replicas": 2}'})
    assert args.model_dir == str(tmp_path)
    assert args.max_ongoing_requests == 64  # sized with the batch, not Serve's default of 5
    assert args.autoscaling_config == {"min_replicas": 1, "max_replicas": 2}
    with pytest.raises(ValidationError, match="caps every batch"):
        ServeArgs(max_batch_size=64, max_ongoing_requests=8)
    for bad, why in (({"max_batch_size": 0}, "Input should be greater than or equal to 1"),
                     ({"batch_size": 8}, "Extra inputs are not permitted")):
        with pytest.raises(ValidationError, match=f"{next(iter(bad))}\n  {why}"):  # the knob named, then why
            ServeArgs.model_validate(bad)


def dashboard_metrics() -> set[str]:
    queries = [target["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for target in panel["targets"]]
    return {name for query in queries for name in re.findall(r"\b(ray_[a-z0-9_]+)\b", query)}


def exported_metrics(port: int) -> dict[str, list[str]]:
    """Metric name -> its sample lines, from a node's Prometheus endpoint."""
    samples: dict[str, list[str]] = {}
    for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            samples.setdefault(re.split(r"[{ ]", line, maxsplit=1)[0], []).append(line)
    return samples


def test_every_metric_the_dashboard_queries_is_exported(url):
    import ray

    for payload in ({"text": POSITIVE[0]}, {"texts": TEXTS}, {"text": ""}):  # error counters start at the first error
        predict(url, payload)
    wanted = dashboard_metrics()
    assert {"ray_sam_predictions_total", "ray_sam_batch_size_bucket", "ray_serve_http_request_latency_ms_bucket"} <= wanted
    port, deadline = ray.nodes()[0]["MetricsExportPort"], time.time() + 60
    while True:
        exported = exported_metrics(port)
        if wanted <= set(exported) or time.time() > deadline:
            break
        time.sleep(1)
    assert wanted <= set(exported), f"the dashboard queries metrics the app does not export: {sorted(wanted - set(exported))}"
    labels = {re.search(r'label="([^"]+)"', line)[1] for line in exported["ray_sam_predictions_total"]}
    assert labels and labels <= set(LABELS)


def test_a_registered_model_serves_from_its_alias(url, tiny_model_dir, tracking):
    from mlflow import MlflowClient
    from ray import serve

    run_id = tracking.start("served", {}, {})
    tracking.log_model(run_id, str(tiny_model_dir))
    version = tracking.register(run_id, "served").rsplit("/", 1)[1]
    MlflowClient(tracking.uri).set_registered_model_alias("served", "production", version)
    serve.run(build_app(ServeArgs(model_dir="models:/served@production")), name="registered", route_prefix="/registered")
    try:
        answer = requests.post(f"{url}/registered/predict", json={"text": POSITIVE[0]}, timeout=60)
        assert answer.status_code == 200 and answer.json() == {**predict(url, {"text": POSITIVE[0]}).json(), "model": f"models:/served/{version}"}
    finally:
        serve.delete("registered")


@pytest.mark.parametrize("runtime", ["torch", "onnx-int8"])
def test_each_runtime_answers_and_names_itself(url, tiny_model_dir, runtime):
    from ray import serve

    serve.run(build_app(ServeArgs(model_dir=str(tiny_model_dir), runtime=runtime)), name=runtime, route_prefix=f"/{runtime}")
    try:
        answer = predict(f"{url}/{runtime}", {"text": POSITIVE[0]})
        assert answer.status_code == 200 and answer.json()["sentiment"] == predict(url, {"text": POSITIVE[0]}).json()["sentiment"]
        assert requests.get(f"{url}/{runtime}/model", timeout=30).json()["runtime"] == runtime
    finally:
        serve.delete(runtime)


def test_a_corrupt_onnx_file_fails_the_deploy_in_one_line(tiny_model_dir, tmp_path):
    import shutil

    broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    (broken / "onnx" / "model_int8.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelDirError, match="model_int8.onnx: cannot load the ONNX model") as refused:
        build_app(ServeArgs(model_dir=str(broken), quantize=True))
    assert "\n" not in str(refused.value)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium with its driver, from Debian's packages (`.ci/run` installs them)."""
    require(Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file(), "Chromium and its driver",
            "apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_is_one_html_file_outside_the_api(url):
    page = requests.get(f"{url}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script src" not in page.text and "http" not in page.text.split("<script>")[1]  # nothing fetched from elsewhere
    assert "/" not in requests.get(f"{url}/openapi.json", timeout=30).json()["paths"]  # the API is unchanged


def test_the_page_answers_in_a_real_browser(url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def results(count: int) -> list:
        WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == count)
        return browser.find_elements(By.CSS_SELECTOR, "#results .result")

    browser.get(f"{url}/")
    box = browser.find_element(By.ID, "text")
    box.send_keys(POSITIVE[0])
    browser.find_element(By.ID, "one").click()
    [card] = results(1)
    expected = predict(url, {"text": POSITIVE[0]}).json()
    assert card.find_element(By.CLASS_NAME, "label").text == expected["sentiment"]
    assert f"{100 * expected['confidence']:.1f} % confident" in card.text
    assert [bar.text.split("\n")[0] for bar in card.find_elements(By.CLASS_NAME, "bar")] == list(LABELS)

    box.clear()
    box.send_keys("\n".join(TEXTS[:3]))
    browser.find_element(By.ID, "lines").click()
    cards = results(3)
    expected = predict(url, {"texts": TEXTS[:3]}).json()["predictions"]
    assert [c.find_element(By.CLASS_NAME, "label").text for c in cards] == [p["sentiment"] for p in expected]

    box.clear()
    box.send_keys("   ")
    browser.find_element(By.ID, "one").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text == "text: text is blank"  # the API's 422, in words
    assert not browser.find_elements(By.CSS_SELECTOR, "#results .result")


def test_reconfigure_retunes_the_running_batcher_and_refuses_a_bad_knob(url, tiny_model_dir):
    from ray import serve

    def deploy(**batching):
        serve.run(build_app(ServeArgs(model_dir=str(tiny_model_dir), **batching)), name="sam")

    try:
        deploy(max_batch_size=2, max_ongoing_requests=32, batch_wait_timeout_s=0.2)  # user_config alone changes
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda text: predict(url, {"text": text}), TEXTS * 2))
        assert all(answer.status_code == 200 for answer in answers)
        batching = requests.get(f"{url}/model", timeout=30).json()["batching"]
        assert batching["max_batch_size"] == 2 and batching["batch_wait_timeout_s"] == 0.2
        assert max(batching["recent_batch_sizes"][-5:]) == 2  # concurrent requests still meet, two at a time
    finally:
        deploy(max_batch_size=8, batch_wait_timeout_s=0.2)
    with pytest.raises(ValidationError, match="max_batch_size"):
        ingress = SentimentDeployment.func_or_class
        ingress.reconfigure(SimpleNamespace(SETTINGS=ingress.SETTINGS), {"max_batch_size": 0})
