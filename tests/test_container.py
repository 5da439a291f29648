"""The images (root Dockerfile: the full one, and the serving one without torch) built and run on this machine with
buildah, where no registry is reachable: a local Debian base from ../shared/container/build-base.sh, this machine's
CPU torch wheel mounted into the build, a tiny model baked in; then /healthz, the page and /predict answer from the
container on loopback.

Runs where buildah and that base exist (`bash ../shared/container/build-base.sh` makes both); it takes minutes."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT, free_port, require

BASE = "localhost/sam-base:bookworm"
WHEELS = Path("/opt/wheels")  # this machine's CPU torch wheel
ENV = {**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}


def _have_base() -> bool:
    if not shutil.which("buildah"):
        return False
    names = subprocess.run(["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"], env=ENV, capture_output=True, text=True)
    return BASE in names.stdout.split()


pytestmark = [pytest.mark.slow, pytest.mark.container]


@pytest.fixture(scope="module", autouse=True)
def builder():
    require(_have_base() and WHEELS.is_dir(), "buildah, a local Debian base image and a CPU torch wheel in /opt/wheels",
            "apt-get install buildah, then bash ../shared/container/build-base.sh")


def buildah(*args: str, timeout: int = 1800, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["buildah", *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    assert not check or done.returncode == 0, done.stderr[-3000:]
    return done


# The full image (torch, every runtime and `sam` command) and the serving image without torch.
IMAGES = {"localhost/sam-test": [], "localhost/sam-serve-test": ["--build-arg", "SERVE_ONLY=1"]}


@pytest.fixture(scope="module", params=list(IMAGES))
def image(request, tiny_model_dir):
    baked = ROOT / "models" / f"container-test-{request.param.rsplit('/', 1)[1]}"  # in the build context, as models/latest
    shutil.rmtree(baked, ignore_errors=True)
    shutil.copytree(tiny_model_dir, baked)
    mounts = ["-v", "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro", "-v", f"{WHEELS}:/wheels:ro"]
    if Path("/etc/pip.conf").is_file():
        mounts += ["-v", "/etc/pip.conf:/etc/pip.conf:ro"]
    try:
        buildah("bud", "--layers", "--format", "docker", *mounts, "--build-arg", f"BASE={BASE}", "--build-arg", "TORCH_FROM=--find-links /wheels",
                "--build-arg", f"MODEL=models/{baked.name}", *IMAGES[request.param], "-t", request.param, str(ROOT))
    finally:
        shutil.rmtree(baked, ignore_errors=True)
    return request.param


@pytest.fixture(scope="module")
def container(image):
    port = free_port()
    name = buildah("from", image).stdout.strip()
    # buildah run shares the host's network: the container's proxy listens on this free loopback port.
    server = subprocess.Popen(["buildah", "run", "--env", f"PORT={port}", "--env", "NUM_CPUS=2", name, "--", "sam-serve"],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.terminate()
        server.wait(timeout=60)
        buildah("run", name, "--", "ray", "stop", "--force", check=False)
        buildah("rm", name, check=False)


def test_the_image_serves_health_the_page_and_predictions(container):
    url, server = container
    deadline = time.time() + 300
    while time.time() < deadline:
        assert server.poll() is None, server.stderr.read()[-3000:]
        try:
            if requests.get(f"{url}/healthz", timeout=5).ok:
                break
        except requests.RequestException:  # not listening yet, or the app not deployed yet
            pass
        time.sleep(2)
    assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
    assert "<textarea" in requests.get(f"{url}/", timeout=10).text
    answer = requests.post(f"{url}/predict", json={"text": "I love the new features in this app!"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["sentiment"] in {"Negative", "Neutral", "Positive"}
    assert requests.post(f"{url}/predict", json={"text": " "}, timeout=60).status_code == 422


def test_the_image_runs_as_a_user_without_root(image):
    info = buildah("inspect", "--format", "{{.OCIv1.Config.User}}", image).stdout.strip()
    assert info == "1000"


def test_the_serving_image_has_no_torch(image):
    name = buildah("from", image).stdout.strip()
    try:
        found = buildah("run", name, "--", "python3", "-c", "import importlib.util as u; print(u.find_spec('torch') is not None)").stdout
    finally:
        buildah("rm", name, check=False)
    assert found.strip() == str(image == "localhost/sam-test")
