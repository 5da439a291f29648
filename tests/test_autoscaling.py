"""Trials scale out: a search whose trials do not fit the head asks for what its Train workers need, the autoscaler
adds worker nodes (Ray's fake provider: real raylets on this machine, started on demand), and trials run at once.

`AutoscalingCluster.start` runs `ray stop --force`, ending every Ray on the machine: it goes last (`multinode`)."""

import copy

import pytest
import ray
from ray import tune
from ray.cluster_utils import AutoscalingCluster

from sam.tune import is_complete, run_search
from tests.helpers import private_ray_temp_dir, tiny_config, tweet_rows, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

# Ray's fake_multi_node/example.yaml, which the PyPI wheel does not ship but AutoscalingCluster reads.
FAKE_PROVIDER_BASE = {
    "cluster_name": "fake_multinode", "max_workers": 8, "upscaling_speed": 1.0, "idle_timeout_minutes": 1,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "head_node_type": "ray.head.default", "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
    "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
    "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
}


class LocalAutoscalingCluster(AutoscalingCluster):
    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        config = copy.deepcopy(FAKE_PROVIDER_BASE)
        config["available_node_types"] = {
            **worker_node_types, "ray.head.default": {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}}
        return {**config, **config_kwargs}


@pytest.fixture
def autoscaling_cluster(s3):
    ray.shutdown()
    with private_ray_temp_dir():  # `ray.init("auto")` finds this cluster, no other
        cluster = LocalAutoscalingCluster(
            head_resources={"CPU": 1},
            worker_node_types={"cpu_2": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 2}},
        )
        cluster.start()
        ray.init("auto", log_to_driver=False)
        try:
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()


def test_trials_that_outgrow_the_head_get_worker_nodes_and_run_at_once(autoscaling_cluster, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", tweet_rows() * 8)
    # Each trial's one worker asks for 2 CPUs: none fits the 1-CPU head, one fits each worker node.
    base = tiny_config(tmp_path, epochs=2, patience=10, cpus_per_worker=2)
    results, spec = run_search(base, str(tmp_path / "storage"), "outgrow", num_samples=1,
                               space={"lr": tune.grid_search([3e-3, 1e-3])})
    assert is_complete(results, spec) and not results.errors
    spans = []
    for result in results:
        frame = result.metrics_dataframe
        end = frame["timestamp"].max()
        spans.append((end - frame["time_total_s"].max(), end))
    (first_start, first_end), (second_start, second_end) = sorted(spans)
    assert second_start < first_end, f"the trials ran one after the other: {spans}"
    workers = [node for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU") == 2]
    assert len(workers) == 2  # the autoscaler added a node for each trial
