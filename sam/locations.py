"""Where a model directory is found: a local path as it is, one on object storage fetched once per node into a
local cache keyed by its listing, a registered model (`models:/`) through MLflow. It sits above storage (files)
and tracking (the registry), which know nothing of each other's models."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pyarrow.fs
from filelock import FileLock

from sam.storage import StorageError, filesystem, is_model_uri, is_uri, listing, readable_here, redact, resolve

CACHE_ENV, DEFAULT_CACHE = "SAM_CACHE_DIR", "~/.cache/sam/models"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE)).expanduser()


def local_model_dir(path: str | Path) -> Path:
    """A model directory to load from: a local one as it is; one on object storage fetched into this node's
    cache, once for each version (its files' names, sizes and modification times), reused afterwards; a registered
    model (`models:/NAME/VERSION`, `models:/NAME@ALIAS`) from where MLflow keeps that version's files."""
    if is_model_uri(path):
        return _registered_model_dir(str(path))
    if not is_uri(path):
        return Path(path).expanduser()
    files = listing(path)
    if not files:
        raise StorageError(f"{redact(path)}: no such model directory")
    fs, inner = filesystem(path)
    version = hashlib.sha256(repr([(f.path, f.size, f.mtime_ns) for f in files]).encode()).hexdigest()[:16]
    where = hashlib.sha256(redact(resolve(path)).encode()).hexdigest()[:12]
    cached = cache_root() / f"{inner.rstrip('/').rsplit('/', 1)[-1]}-{where}-{version}"

    def fetch(staging: Path) -> Path:
        local_fs = pyarrow.fs.LocalFileSystem()
        for file in files:
            target = staging / file.path[len(inner.rstrip("/")) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            pyarrow.fs.copy_files(file.path, str(target), source_filesystem=fs, destination_filesystem=local_fs)
        return staging

    return _fill_once(cached, fetch)


def derived_dir(directory: Path, kind: str, make: Callable[[Path], Path]) -> Path:
    """What `make` derives from a local model directory (its ONNX export), made once per node into the cache and
    keyed as a fetched URI is: by the directory's place and its files' names, sizes and modification times."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    version = hashlib.sha256(repr([(str(p.relative_to(directory)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]).encode())
    where = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:12]
    return _fill_once(cache_root() / f"{directory.name}-{kind}-{where}-{version.hexdigest()[:16]}", make)


def _fill_once(cached: Path, fill: Callable[[Path], Path]) -> Path:
    """`cached`, filled by `fill` (given an empty staging directory, it returns the directory to keep) unless
    it is there already; replicas and actors on one node fill it once between them, and a failed fill leaves
    nothing behind."""
    if cached.is_dir():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{cached}.lock"):
        if not cached.is_dir():
            staging = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
            try:
                fill(staging).rename(cached)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return cached


def model_location(path: str | Path) -> str:
    """A model directory as every Ray process of a job finds it: a URI as given, a local path made absolute, a
    registered model pinned to the version it names now (an alias moved mid-job changes nothing)."""
    return deployed_model(path)[0]


def deployed_model(path: str | Path) -> tuple[str, str]:
    """`model_location`'s answer and the model's name as answers and logs show it: `models:/NAME/VERSION` for a
    registered model (whichever alias named it), else its location, credentials left out. A registered model is
    pinned to the version's files when storage reads them (a local path, s3://...), else to
    `models:/NAME/VERSION`, which each node downloads through MLflow."""
    if not is_model_uri(path):
        return resolve(path), redact(resolve(path))
    from sam.tracking import registered_version  # MLflow and Ray Train: only for a registered model

    name, version, source = registered_version(str(path))
    version_uri = f"models:/{name}/{version}"
    return (source if readable_here(source) else version_uri), version_uri


def _registered_model_dir(uri: str) -> Path:
    from sam.tracking import download_model, registered_version  # MLflow and Ray Train: only for a registered model

    source = registered_version(uri)[2]
    if readable_here(source):
        return local_model_dir(source)
    cached = cache_root() / f"mlflow-{hashlib.sha256(source.encode()).hexdigest()[:16]}"
    return _fill_once(cached, lambda staging: download_model(source, staging))
