"""Two Ray nodes on one machine (`ray.cluster_utils.Cluster`): DDP training spread over both, checkpointing to
storage both see, then the model it made served by one replica per node.

The Cluster is a Ray instance of its own, so this module shuts down whatever Ray the process had (the
session's `ray_session`) and starts nothing afterwards; the `multinode` mark makes conftest run it last.
"""

import json
import time
from pathlib import Path

import pytest
import ray
import requests
from ray.train import RunConfig
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from ray.util.state import list_tasks

from sam.checkpoint import export
from sam.prepare import prepare
from sam.predict import Predictor
from sam.train import checkpoint_config, make_trainer
from tests.helpers import free_port, local_cluster, nodes_of, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.multinode]


@pytest.fixture(scope="module")
def cluster(s3):
    # The dashboard serves the state API that tells which node each actor ran on.
    with local_cluster(head={"num_cpus": 2, "include_dashboard": True, "dashboard_port": free_port()},
                       workers=[{"num_cpus": 2}]) as nodes:
        yield nodes


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
    data = prepare(config)
    run_config = RunConfig(name="multinode", storage_path=str(shared), checkpoint_config=checkpoint_config())
    return shared, make_trainer(config, data, run_config).fit()


def test_ddp_workers_on_two_nodes_train_and_checkpoint_to_shared_storage(trained, node_ids):
    shared, result = trained
    assert result.error is None
    assert result.metrics["epoch"] == 2 and result.metrics["samples_per_s"] > 0
    checkpoint = Path(result.checkpoint.path)
    assert checkpoint.is_relative_to(shared) and (checkpoint / "model.safetensors").is_file()
    workers = nodes_of("RayTrainWorker")
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
        replicas = nodes_of("ServeReplica:sam:Sentiment", state="ALIVE")
        assert len(replicas) == 2 and set(replicas) == node_ids
        for text in ("I love this, best day ever", "worst service, I hate it", "the bus comes at 8"):
            response = requests.post(f"http://127.0.0.1:{port}/predict", json={"text": text}, timeout=30)
            assert response.status_code == 200
            assert response.json()["label"] == local.predict([text])[0]["label"]  # the replicas serve this very model
    finally:
        serve.shutdown()


def recorded_tasks(name: str, timeout_s: float = 30.0) -> list:
    """Tasks whose name holds `name`, from the State API, which hears of a finished task a moment after it ends."""
    deadline = time.time() + timeout_s
    while True:
        tasks = [task for task in list_tasks(detail=True, limit=10_000) if name in task.name]
        if tasks or time.time() > deadline:
            return tasks
        time.sleep(0.5)


def test_a_local_output_path_is_written_whole_on_the_drivers_node(trained, cluster, tweets_dir, tmp_path, capsys):
    """Each Ray Data task writes a plain local path on its own node: on a real cluster the predictions would be
    scattered over the nodes. They are written where the command runs, whole, whichever node scored them."""
    from sam.cli import main

    _, result = trained
    model_dir = tmp_path / "model"
    export(result.get_best_checkpoint(metric="val_loss", mode="min"), model_dir, {})
    output = tmp_path / "pred"
    # The head's CPUs held, so both scoring actors (and the blocks they make) are on the other node.
    class Holder:  # defined here: Ray ships it by value, as workers cannot import the tests
        def ready(self) -> bool:
            return True

    holder = ray.remote(num_cpus=2)(Holder).options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        cluster.head_node.node_id, soft=False)).remote()
    ray.get(holder.ready.remote())
    try:
        assert main(["predict", "--model", str(model_dir), "--data", str(tweets_dir), "--output", str(output),
                     "--format", "jsonl", "--actors", "2"]) == 0
    finally:
        ray.kill(holder)
    assert set(nodes_of("MapWorker(MapBatches(BatchScorer))")) == {next(iter(cluster.worker_nodes)).node_id}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == 90
    rows = [json.loads(line) for file in (output / "predictions").glob("*.json*") for line in file.read_text().splitlines()]
    assert len(rows) == 90
    writes = recorded_tasks("Write")
    assert writes and {task.node_id for task in writes} == {cluster.head_node.node_id}  # the driver's node
