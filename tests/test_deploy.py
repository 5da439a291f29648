"""The Kubernetes manifests (deploy/kuberay) against the tests' own schema of KubeRay v1.7.0's RayService and RayJob
fields (tests/kuberay_schema.py, written from the CRDs), their Serve config against the repository's one, and the
search they run against the CLI."""

import copy
import shlex

import jsonschema
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from sam.cli import build_parser
from sam.serve import ServeArgs
from tests.helpers import ROOT, pinned_ray_version
from tests.kuberay_schema import RAYJOB_SCHEMA, RAYSERVICE_SCHEMA

MANIFESTS = {"rayservice.yaml": RAYSERVICE_SCHEMA, "rayjob.yaml": RAYJOB_SCHEMA}


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "deploy" / "kuberay" / name).read_text())


def cluster_of(manifest: dict) -> dict:
    return manifest["spec"].get("rayClusterConfig") or manifest["spec"]["rayClusterSpec"]


def containers(manifest: dict) -> list[dict]:
    cluster = cluster_of(manifest)
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [container for group in groups for container in group["template"]["spec"]["containers"]]


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_hold_to_kuberays_fields_and_the_pinned_ray(name):
    manifest = load(name)
    jsonschema.Draft202012Validator(MANIFESTS[name], format_checker=jsonschema.FormatChecker()).validate(manifest)
    assert cluster_of(manifest)["rayVersion"] == pinned_ray_version()
    assert len({container["image"] for container in containers(manifest)}) == 1  # one image on every node


def mutations(manifest: dict):
    """Manifests the operator would not run as meant: an unknown field (a CRD prunes it silently), a wrong type, a
    required field gone."""
    unknown = copy.deepcopy(manifest)
    containers(unknown)[0]["imagePulPolicy"] = "Always"
    yield "a misspelt container field", unknown
    top = copy.deepcopy(manifest)
    top["spec"]["rayClusterConfg" if "rayClusterConfig" in top["spec"] else "shutdownAfterJobFinish"] = True
    yield "a misspelt spec field", top
    typed = copy.deepcopy(manifest)
    cluster_of(typed)["workerGroupSpecs"][0]["replicas"] = "2"
    yield "replicas as a string", typed
    started = copy.deepcopy(manifest)
    cluster_of(started)["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    yield "a rayStartParams value that is not a string", started
    missing = copy.deepcopy(manifest)
    del cluster_of(missing)["headGroupSpec"]["template"]
    yield "the head without its pod template", missing


@pytest.mark.parametrize("name", MANIFESTS)
def test_mutated_manifests_are_refused(name):
    validator = jsonschema.Draft202012Validator(MANIFESTS[name], format_checker=jsonschema.FormatChecker())
    for what, manifest in mutations(load(name)):
        assert not validator.is_valid(manifest), what


def test_the_rayservice_serves_the_one_serve_config():
    served = yaml.safe_load(load("rayservice.yaml")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(served)  # what KubeRay hands to Serve
    assert served["applications"] == yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"]
    for app in served["applications"]:
        ServeArgs.model_validate(app["args"])  # what build_app checks at deploy


def test_the_rayjob_runs_a_search_the_cli_accepts():
    command = shlex.split(load("rayjob.yaml")["spec"]["entrypoint"])
    assert command[:2] == ["python", "tune/search.py"]
    args = build_parser().parse_args(["tune", *command[2:]])
    assert args.storage.startswith("s3://") and args.output.startswith("s3://")  # every node reaches them
    yaml.safe_load(load("rayjob.yaml")["spec"]["runtimeEnvYAML"])


def test_the_dockerfile_passes_hadolint():
    import subprocess

    linted = subprocess.run(["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert linted.returncode == 0, linted.stdout + linted.stderr
