"""What the tests share besides fixtures: hand-written tweets, the tiny model's shape, paths, local clusters, and
`require`, which skips a test whose system part is absent (naming how to install it) and fails it in CI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from sam.config import Config

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "tweet_sentiment_extraction"

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

# A model small enough to train in seconds on the fixture tweets, and its run's settings.
TINY_SHAPE = dict(num_layers=1, num_heads=2, d_model=32, d_ff=64, max_length=32, vocab_size=200,
                  batch_size=8, warmup_steps=2, val_fraction=0.2)
TINY_RUN = dict(epochs=2, lr=3e-3)
# The same shape as `sam` options (each one fixed, so out of a search's space).
TINY_OPTIONS = [item for knob, value in TINY_SHAPE.items() for item in (f"--{knob.replace('_', '-')}", str(value))]

# Ray's own intervals, shortened for tests: Serve's metrics reach the export port within seconds, and Train's
# controller looks at its workers every quarter second (every 2 s by default: seconds of each run's start and end).
RAY_TEST_SETTINGS = {"RAY_metrics_report_interval_ms": "1000", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


def require(present: bool, what: str, how: str) -> None:
    """Skip a test whose system part is absent, saying how to install it; CI installs every one, so there a
    missing part fails the test instead of skipping it quietly."""
    if present:
        return
    message = f"needs {what}: {how}"
    if os.environ.get("CI", "").lower() in ("1", "true"):
        pytest.fail(f"{message} (CI installs it, so its absence is a failure)", pytrace=False)
    pytest.skip(message)


def tweet_rows():
    return [{"text": t, "label": label} for label, texts in enumerate((NEGATIVE, NEUTRAL, POSITIVE)) for t in texts]


def tiny_config(data_dir, **flat) -> Config:
    """The tiny model's config over `data_dir`, with `flat` knobs changed."""
    return Config().with_flat(source=str(data_dir), **{**TINY_SHAPE, **TINY_RUN, **flat})


def encoder_dir(directory: Path, config: Config | None = None) -> Path:
    """A small BERT classifier directory in seconds, without Ray: a stand-in for a pretrained encoder, or with
    `config` saved beside it (sam_config.json) for a SAM model such as a teacher."""
    from sam.models import build_model
    from sam.tokenizer import train_wordpiece

    saved, config = config is not None, config or tiny_config(directory)
    tokenizer = train_wordpiece([row["text"] for row in tweet_rows()], config.model.vocab_size)
    build_model(config.model, tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if saved:
        config.save(directory)
    return directory


def plain_hf_directory(sam_model, directory, order: list[int], safetensors: bool = True):
    """`sam_model` as another tool would save it: no sam_config.json or metrics.json, its labels named in its own
    order (the head's rows permuted to match, so it is the same model)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(sam_model)
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight[order])
        model.classifier.bias.copy_(model.classifier.bias[order])
    names = ["negative", "neutral", "positive"]
    model.config.id2label = {i: names[label] for i, label in enumerate(order)}
    model.config.label2id = {name: i for i, name in model.config.id2label.items()}
    model.save_pretrained(directory, safe_serialization=safetensors)
    AutoTokenizer.from_pretrained(sam_model).save_pretrained(directory)
    return directory


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


def pinned_ray_version() -> str:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray,) = [d for d in dependencies if re.match(r"ray\b", d)]
    return ray.split("==")[1]


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


def tiny_learner(rows, **train):
    """A `Learner` over a one-layer encoder and WordPiece trained on `rows`, with the rows' encoded columns."""
    import numpy as np
    import torch

    from sam.config import ModelConfig, TrainConfig
    from sam.data import class_weights
    from sam.encoding import encode_column
    from sam.learner import Learner
    from sam.models import build_model
    from sam.tokenizer import train_wordpiece

    torch.manual_seed(0)
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    tokenizer = train_wordpiece([r["text"] for r in rows], 300)
    model = build_model(ModelConfig(num_layers=1, num_heads=2, d_model=32, d_ff=64, dropout=0.0), tokenizer)
    labels = np.array([r["label"] for r in rows])
    config = TrainConfig(**{"lr": 3e-3, "warmup_steps": 1, "batch_size": 16, **train})
    learner = Learner(model, config, total_steps=30, class_weights=class_weights(np.bincount(labels, minlength=3)), device=torch.device("cpu"))
    columns = {"input_ids": encode_column(tokenizer, [r["text"] for r in rows], 32), "labels": labels}
    return learner, columns, tokenizer.pad_token_id


def best_rank_geometry(embeddings, rank: int):
    """Dot products between tokens that the best `rank`-wide projection of the centered embeddings keeps: the
    same whatever the signs of its components."""
    import torch

    u, s, vh = torch.linalg.svd(embeddings - embeddings.mean(dim=0), full_matrices=False)
    kept = u[:, :rank] * s[:rank] @ vh[:rank]
    return kept @ kept.T


def without_modules(*names: str) -> str:
    """Python source to run first in a `python -c` child: importing `names` (or a submodule of one) fails as it
    would where they are not installed."""
    return f"""
import sys
from importlib.abc import MetaPathFinder

class Blocked(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == blocked or name.startswith(blocked + ".") for blocked in {names!r}):
            raise ImportError(f"blocked: {{name}}")

sys.meta_path.insert(0, Blocked())
"""


def stop_ray_started_in(temp_dir: str, gcs_port: int) -> None:
    """Stops the Ray that `ray start` left running with RAY_TMPDIR=`temp_dir`, and nothing else: `ray stop` would
    stop every Ray on the machine, the test session's too. Its processes name the temp dir (or, Ray's client
    server, the GCS port) on their command lines; their children (workers, the dashboard's modules) go with them."""
    processes = {}  # pid: (parent pid, command line), from /proc
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            processes[int(entry.name)] = (int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]), line)
    doomed = {pid for pid, (_, line) in processes.items()
              if pid != os.getpid() and (temp_dir in line or ("ray.util.client.server" in line and f":{gcs_port} " in line))}
    while grown := {pid for pid, (parent, _) in processes.items() if parent in doomed} - doomed:
        doomed |= grown
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_running(pid) for pid in doomed):
            time.sleep(0.2)


def _running(pid: int) -> bool:
    """Neither gone nor a zombie waiting for its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
