"""A lost node survived: the node running the training worker is removed mid-epoch, and the run resumes on another
node from its last checkpoint on the bucket (an S3-compatible server on loopback), exporting a whole model.

The head holds no CPU, as on a cluster whose head only coordinates: the worker runs on one of two worker nodes."""

import threading
import time

import pytest

from sam.predict import Predictor
from sam.storage import join
from sam.train import train
from tests.helpers import free_port, local_cluster, nodes_of, tiny_config, tweet_rows, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.multinode]


def test_losing_a_workers_node_mid_epoch_resumes_on_another_from_the_bucket(s3, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", tweet_rows() * 40)  # epochs of a few seconds: time to act mid-epoch
    config = tiny_config(tmp_path, epochs=4, patience=10, torch_threads=1)
    storage, name, output = s3.uri("node_loss"), "lost-node", tmp_path / "model"
    with local_cluster(head={"num_cpus": 0, "include_dashboard": True, "dashboard_port": free_port()},
                       workers=[{"num_cpus": 1}, {"num_cpus": 1}]) as cluster:
        outcome, timeline, started = {}, [], time.monotonic()

        def run() -> None:
            try:
                outcome["metrics"] = train(config, output, storage=storage, name=name, max_failures=1)
            except BaseException as error:  # re-raised in the test's thread below
                outcome["error"] = error

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 300
        # Ray Train writes this snapshot once it has registered a checkpoint: from then on a restart resumes it.
        while "checkpoint_manager_snapshot.json" not in s3.files(join(storage, name)):
            assert thread.is_alive() and time.monotonic() < deadline, outcome.get("error", "no checkpoint in time")
            time.sleep(0.2)
        timeline.append((time.monotonic() - started, "first checkpoint registered on the bucket"))
        (lost,) = nodes_of("RayTrainWorker", state="ALIVE")
        cluster.remove_node(next(node for node in cluster.worker_nodes if node.node_id == lost), allow_graceful=False)
        timeline.append((time.monotonic() - started, "the training worker's node removed"))
        assert thread.is_alive(), "the run ended before its node was lost"
        survivors = []
        while thread.is_alive() and not survivors:
            survivors = [node for node in nodes_of("RayTrainWorker", state="ALIVE") if node != lost]
            time.sleep(0.2)
        timeline.append((time.monotonic() - started, f"a worker alive again on {len(set(survivors))} other node(s)"))
        thread.join(timeout=300)
        timeline.append((time.monotonic() - started, "run finished and exported"))
        if "error" in outcome:
            raise outcome["error"]

    history = outcome["metrics"]["history"]
    print("timeline:", "; ".join(f"{t:.1f} s {what}" for t, what in timeline))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[0]["restored_from_epoch"] == 0 and history[-1]["restored_from_epoch"] >= 1  # resumed, not restarted
    assert survivors and lost not in survivors
    prediction = Predictor(output).predict(["back to work after the outage"])[0]
    assert sum(prediction["scores"].values()) == pytest.approx(1.0, abs=1e-3)
