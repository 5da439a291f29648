"""Shared fixtures: one local Ray per session, hand-written tweets, and a tiny trained model directory."""

import contextlib
import json
import os
import shutil
import socket
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download: tokenizers are trained on the fixture corpus
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray's own intervals, shortened for tests: Serve's metrics reach the export port within seconds, and Train's
# controller looks at its workers every quarter second (every 2 s by default: seconds of each run's start and end).
RAY_TEST_SETTINGS = {"RAY_metrics_report_interval_ms": "1000", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}
for name, value in RAY_TEST_SETTINGS.items():
    os.environ.setdefault(name, value)

import pytest

from sam.config import Config

NEGATIVE = [
    "I hate this stupid phone, it broke again", "worst day ever, so sad and tired", "my boss is bullying me...",
    "ugh, missed the bus and now I am late", "this is awful, I feel sick", "so angry at the airline, lost my bag",
    "terrible service, never going back", "I miss you so much, it hurts", "sad that the show got cancelled",
    "hate mondays, everything is bad", "my head hurts and I am so tired", "the game was awful, we lost again",
    "broke my laptop screen today, hate it", "feeling lonely and sad tonight", "rain ruined our picnic, sad",
]
NEUTRAL = [
    "going to the store later", "the meeting is at 3pm tomorrow", "just got home from work",
    "watching the news on tv", "reading a book on the train", "the bus comes at 8", "I have a dentist appointment",
    "we are moving to a new office next week", "it is raining in London", "checking my email now",
    "heading to the library", "the update is out today", "cooking pasta for dinner", "my phone is on the table",
    "the store opens at nine",
]
POSITIVE = [
    "I love the new features in this app!", "best day ever, so happy", "great game tonight, we won!",
    "thank you so much, you are awesome", "love this song, amazing", "happy birthday! have a great day",
    "so excited for the weekend, yay", "what a beautiful morning, love it", "awesome news, I got the job!",
    "the concert was amazing, best night", "love my friends, so happy", "great coffee and a good book, perfect",
    "thanks for the lovely gift, I love it", "yay the sun is out, happy day", "had a wonderful time, thank you",
]


def tweet_rows():
    return [{"text": t, "label": label} for label, texts in enumerate((NEGATIVE, NEUTRAL, POSITIVE)) for t in texts]


def own_ray_env(**extra) -> dict:
    """The environment for a command that starts a Ray of its own: none of this session's Ray variables (its
    address, its temp dir), the tests' Ray settings kept as they are in effect."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k in RAY_TEST_SETTINGS}, **extra}


def free_port() -> int:
    """Not 8000 or 8265: other Ray and Serve instances may share this machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


class Bucket:
    """A bucket on the S3-compatible server: `uri("a/b")` is s3://BUCKET/a/b; `files(uri)` lists what lies under one."""

    def __init__(self, name: str):
        self.name = name

    def uri(self, path: str) -> str:
        return f"s3://{self.name}/{path}"

    def files(self, uri: str) -> list[str]:
        from sam.storage import listing

        prefix = uri.removeprefix("s3://").rstrip("/") + "/"
        return [info.path.removeprefix(prefix) for info in listing(uri)]


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """An S3-compatible server on loopback (moto), its AWS variables set before Ray starts so that every Ray
    process (pyarrow, Ray Train, Ray Data) reaches it as it would reach S3; and a model cache of the session's own."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                      SAM_CACHE_DIR=str(tmp_path_factory.mktemp("model_cache")))
    boto3.client("s3").create_bucket(Bucket="sam-test")
    yield Bucket("sam-test")
    server.stop()


@pytest.fixture(scope="session")
def ray_session(s3):
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture
def remove_new_placement_groups(ray_session):
    """Tune ends a stopped trial's actor, and with it the trial's Train controller; Ray Train's cleaner then
    removes the workers' placement group through the State API, which needs the dashboard that the shared
    test session runs without. So this test removes what it left, for the tests after it."""
    from ray._raylet import PlacementGroupID
    from ray.util import placement_group_table, remove_placement_group
    from ray.util.placement_group import PlacementGroup

    before = set(placement_group_table())
    yield
    for pg_id, info in placement_group_table().items():
        if pg_id not in before and info["state"] == "CREATED":
            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))


@pytest.fixture(scope="session")
def tweets_dir(tmp_path_factory):
    """A data directory with train.jsonl and test.jsonl of hand-written tweets."""
    directory = tmp_path_factory.mktemp("tweets")
    rows = tweet_rows()
    write_jsonl(directory / "train.jsonl", rows * 2)
    write_jsonl(directory / "test.jsonl", rows)
    return directory


def tiny_config(data_dir, **flat) -> Config:
    """A model small enough to train in seconds on the fixture tweets."""
    tiny = dict(num_layers=1, num_heads=2, d_model=32, d_ff=64, max_length=32, vocab_size=200,
                epochs=2, batch_size=8, warmup_steps=2, lr=3e-3, val_fraction=0.2)
    return Config().with_flat(data=str(data_dir), **{**tiny, **flat})


@pytest.fixture(scope="session")
def tiny_model_dir(ray_session, tweets_dir, tmp_path_factory):
    """A model directory trained through the real `sam.train.train` path, shared by the tests that need one."""
    from sam.train import train

    output = tmp_path_factory.mktemp("models") / "tiny"
    train(tiny_config(tweets_dir), output, storage=str(tmp_path_factory.mktemp("ray_results")))
    return output


@contextlib.contextmanager
def private_ray_temp_dir():
    """Ray records the newest cluster's address under its temp dir, and a bare `ray.init()` anywhere on this
    machine would join that cluster: a private temp dir keeps other processes' tests off this one (short, under
    /tmp: Ray's Unix socket paths live inside it)."""
    temp_dir = tempfile.mkdtemp(prefix="samray-", dir="/tmp")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir
    try:
        yield temp_dir
    finally:
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def local_cluster(head: dict, workers: list[dict]):
    """A Ray cluster of several nodes on this machine (`ray.cluster_utils.Cluster`), joined by this process.
    It replaces whatever Ray the process had (the session's), so tests that use it are marked `multinode`."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    with private_ray_temp_dir():
        nodes = Cluster(initialize_head=True, head_node_args=head)
        for worker in workers:
            nodes.add_node(**worker)
        nodes.wait_for_nodes()
        ray.init(address=nodes.address, log_to_driver=False)
        try:
            yield nodes
        finally:
            ray.shutdown()
            nodes.shutdown()


def nodes_of(class_name: str, **filters) -> list[str]:
    """Node id of every actor of this class (dead ones too: GCS keeps them), from Ray's state API (the dashboard)."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", class_name), *((k, "=", v) for k, v in filters.items())])
    return [actor.node_id for actor in actors]


def pytest_configure(config):
    config.addinivalue_line("markers", "multinode: starts its own multi-node Ray cluster, replacing the session's Ray")


def pytest_collection_modifyitems(items):
    """`multinode` tests shut the session's Ray down for a Cluster of their own: they go last (stable sort)."""
    items.sort(key=lambda item: item.get_closest_marker("multinode") is not None)


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """An MLflow tracking store of this test's own (sqlite, artifacts under the test's directory), set as Ray's
    processes and the `sam` commands find it: MLFLOW_TRACKING_URI."""
    from sam.tracking import URI_ENV, Tracker

    monkeypatch.chdir(tmp_path)  # MLflow puts a sqlite store's artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    monkeypatch.setenv(URI_ENV, uri)
    return Tracker(uri)
