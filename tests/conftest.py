"""Shared fixtures: one local Ray per session, an S3-compatible server, the fixture tweets, a tiny trained model
directory and a tracking store. Helpers that are not fixtures live in tests/helpers.py."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download: tokenizers are trained on the fixture corpus
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests.helpers import RAY_TEST_SETTINGS, Bucket, tiny_config, tweet_rows, write_jsonl  # noqa: E402

for name, value in RAY_TEST_SETTINGS.items():
    os.environ.setdefault(name, value)


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


@pytest.fixture(scope="session")
def tiny_model_dir(ray_session, tweets_dir, tmp_path_factory):
    """A model directory trained through the real `sam.train.train` path, shared by the tests that need one."""
    from sam.train import train

    output = tmp_path_factory.mktemp("models") / "tiny"
    train(tiny_config(tweets_dir), output, storage=str(tmp_path_factory.mktemp("ray_results")))
    return output


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
