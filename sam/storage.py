"""Where SAM reads and writes: a local path or any URI pyarrow opens (s3://, gs://, hdfs://, file://), the same
way in every stage. Writes go through pyarrow filesystems; where a model directory is found is sam.locations."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.fs

from sam import SamError

PYARROW_SCHEMES = {"file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"}
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Credentials a URI can carry: `s3://KEY:SECRET@bucket/...` and `?secret_key=...&session_token=...`.
USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@")
SECRET_QUERY = re.compile(r"((?:access_key|secret_key|session_token|token|password)=)[^&]*", re.IGNORECASE)


class StorageError(SamError):
    """A path or URI that cannot be opened or written: the message names it, without its credentials."""


def is_uri(path: str | Path) -> bool:
    return bool(SCHEME.match(str(path)))


def is_model_uri(path: str | Path) -> bool:
    """A registered model: `models:/NAME/VERSION` or `models:/NAME@ALIAS`."""
    return str(path).startswith("models:/")


def redact(path: str | Path) -> str:
    """The path as it may be printed or logged: any credentials a URI carries replaced by ***."""
    return SECRET_QUERY.sub(r"\1***", USERINFO.sub(r"\1***@", str(path)))


def resolve(path: str | Path) -> str:
    """A URI as given (less a trailing slash); a local path made absolute, as Ray's workers need it."""
    return str(path).rstrip("/") if is_uri(path) else str(Path(path).expanduser().absolute())


def filesystem(path: str | Path) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem and the path inside it."""
    if not is_uri(path):
        return pyarrow.fs.LocalFileSystem(), resolve(path)
    try:
        return pyarrow.fs.FileSystem.from_uri(resolve(path))
    except (OSError, ValueError, pyarrow.ArrowException) as error:
        raise StorageError(f"{redact(path)}: cannot open ({redact(error)})") from None


def join(path: str | Path, *names: str) -> str:
    return "/".join([resolve(path), *names]) if is_uri(path) else str(Path(resolve(path), *names))


def file_type(path: str | Path) -> pyarrow.fs.FileType:
    fs, inner = filesystem(path)
    try:
        return fs.get_file_info(inner).type
    except (OSError, pyarrow.ArrowException) as error:
        raise StorageError(f"{redact(path)}: cannot read ({redact(error)})") from None


def exists(path: str | Path) -> bool:
    return file_type(path) != pyarrow.fs.FileType.NotFound


def listing(path: str | Path) -> list[pyarrow.fs.FileInfo]:
    """Every file below a directory, sorted by path; empty when there is no such directory."""
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type != pyarrow.fs.FileType.Directory:
        return []
    found = fs.get_file_info(pyarrow.fs.FileSelector(inner, recursive=True))
    return sorted((f for f in found if f.type == pyarrow.fs.FileType.File), key=lambda f: f.path)


def read_text(path: str | Path) -> str:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as stream:
        return stream.read().decode()


def write_text(path: str | Path, text: str) -> None:
    fs, inner = filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as stream:
        stream.write(text.encode())


def delete_dir(path: str | Path) -> None:
    """Removes a directory and everything below it; nothing to do when there is none."""
    if exists(path):
        fs, inner = filesystem(path)
        fs.delete_dir(inner)


def upload_dir(local: str | Path, destination: str, last: tuple[str, ...] = ()) -> None:
    """Copies a local directory's files to a URI, the files named in `last` after every other one, so that a
    reader who checks for them never sees a partial upload as whole."""
    fs, inner = filesystem(destination)
    local_fs = pyarrow.fs.LocalFileSystem()
    files = sorted((p for p in Path(local).rglob("*") if p.is_file()), key=lambda p: (p.name in last, str(p)))
    fs.create_dir(inner, recursive=True)
    for file in files:
        relative = file.relative_to(local).as_posix()
        pyarrow.fs.copy_files(str(file), f"{inner}/{relative}", source_filesystem=local_fs, destination_filesystem=fs)


def ray_data_path(path: str | Path) -> str:
    """Where Ray Data tasks read or write `path`. Each task writes a plain local path on the node that ran it,
    which on a cluster scatters the output over the nodes: it becomes `local://`, which runs those tasks on the
    driver's node, so the output lies whole where the command ran. URIs are left as they are."""
    return resolve(path) if is_uri(path) else f"local://{resolve(path)}"


def readable_here(source: str) -> bool:
    """A local path or a URI pyarrow opens; MLflow's own `mlflow-artifacts:` and `dbfs:` are neither."""
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", source)
    return scheme is None or scheme[1].lower() in PYARROW_SCHEMES or len(scheme[1]) == 1  # C:\ is a path
