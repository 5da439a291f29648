"""Two Ray nodes on one machine (`ray.cluster_utils.Cluster`): DDP training spread over both, checkpointing to
storage both see, then the model it made served by one replica per node.

The Cluster is a Ray instance of its own, so this module shuts down whatever Ray the process had (the
session's `ray_session`) and starts nothing afterwards; the `multinode` mark makes conftest run it last.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import ray
import requests
from ray.cluster_utils import Cluster
from ray.train import RunConfig
from ray.util.state import list_actors

from sam.checkpoint import export
from sam.data import prepare_data
from sam.predict import Predictor
from sam.train import checkpoint_config, make_trainer
from tests.conftest import free_port, tiny_config

pytestmark = pytest.mark.multinode


def _nodes_of(class_name: str, **filters) -> list[str]:
    """Node id of every actor of this class (dead ones too: GCS keeps them), from Ray's state API."""
    actors = list_actors(filters=[("class_name", "=", class_name), *((k, "=", v) for k, v in filters.items())])
    return [actor.node_id for actor in actors]


@pytest.fixture(scope="module")
def cluster():
    ray.shutdown()  # the session's Ray, if a test before this module started one
    # Ray records the newest cluster's address under its temp dir, and a bare `ray.init()` anywhere on this
    # machine would join that cluster: a private temp dir keeps other processes' tests off this one.
    # Short, under /tmp: Ray's Unix socket paths live inside it.
    temp_dir = tempfile.mkdtemp(prefix="samray-", dir="/tmp")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir
    nodes = Cluster(
        initialize_head=True,
        # The dashboard serves the state API that tells which node each actor ran on.
        head_node_args={"num_cpus": 2, "include_dashboard": True, "dashboard_port": free_port()},
    )
    nodes.add_node(num_cpus=2)
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, log_to_driver=False)
    try:
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def node_ids(cluster) -> set[str]:
    ids = {cluster.head_node.node_id, *(node.node_id for node in cluster.worker_nodes)}
    assert len(ids) == 2
    return ids


@pytest.fixture(scope="module")
def trained(cluster, tweets_dir, tmp_path_factory):
    """Two DDP workers, SPREAD so that each lands on its own node, checkpointing into one directory that
    both nodes see, as S3 or NFS would be on a real cluster."""
    shared = tmp_path_factory.mktemp("shared_storage")
    config = tiny_config(tweets_dir, num_workers=2, placement_strategy="SPREAD", torch_threads=1)
    data = prepare_data(config)
    run_config = RunConfig(name="multinode", storage_path=str(shared), checkpoint_config=checkpoint_config())
    return shared, make_trainer(config, data, run_config).fit()


def test_ddp_workers_on_two_nodes_train_and_checkpoint_to_shared_storage(trained, node_ids):
    shared, result = trained
    assert result.error is None
    assert result.metrics["epoch"] == 2 and result.metrics["samples_per_s"] > 0
    checkpoint = Path(result.checkpoint.path)
    assert checkpoint.is_relative_to(shared) and (checkpoint / "model.safetensors").is_file()
    workers = _nodes_of("RayTrainWorker")
    assert len(workers) == 2 and set(workers) == node_ids  # one DDP rank per node


def test_serve_replicas_on_two_nodes_answer_predict(trained, node_ids, tmp_path):
    from ray import serve

    from sam.serve import ServeArgs, build_app

    _, result = trained
    model_dir = tmp_path / "model"
    export(result.get_best_checkpoint(metric="val_loss", mode="min"), model_dir, {})
    local = Predictor(model_dir)
    port = free_port()
    # One proxy: every node's proxy would want the same port on this one machine.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        # Each node has 2 CPUs and each replica asks for 2: one replica fits per node, so both nodes serve.
        serve.run(build_app(ServeArgs(model_dir=str(model_dir), num_replicas=2, num_cpus=2)), name="sam")
        replicas = _nodes_of("ServeReplica:sam:Sentiment", state="ALIVE")
        assert len(replicas) == 2 and set(replicas) == node_ids
        for text in ("I love this, best day ever", "worst service, I hate it", "the bus comes at 8"):
            response = requests.post(f"http://127.0.0.1:{port}/predict", json={"text": text}, timeout=30)
            assert response.status_code == 200
            assert response.json()["label"] == local.predict([text])[0]["label"]  # the replicas serve this very model
    finally:
        serve.shutdown()
