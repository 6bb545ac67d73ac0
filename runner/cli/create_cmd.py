"""`lm create NAME -f Modelfile`: parse locally, upload local files as blobs, then POST /api/create."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from modelfiles import ModelfileError, parse_modelfile

from runner.model.modelfile_request import ModelfileSourceError, create_body
from runner.cli.client import Client, ClientError

def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    transient=True)


class _ProgressReader:
    """A file whose reads advance a progress bar (urllib streams it as the request body)."""

    def __init__(self, f, progress: Progress, task):
        self.f, self.progress, self.task = f, progress, task

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n if n and n > 0 else 1 << 20)
        self.progress.advance(self.task, len(data))
        return data


def _sha256(path: Path, progress: Progress) -> str:
    task = progress.add_task(f"hashing {path.name}", total=path.stat().st_size)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            progress.advance(task, len(chunk))
    progress.remove_task(task)
    return "sha256:" + h.hexdigest()


def upload_blob(client: Client, path: Path) -> str:
    """Uploads a local file once (skipped when the daemon has it); returns its digest."""
    if not path.is_file():
        raise ClientError(f"no such file: {path}")
    with _progress() as progress:
        digest = _sha256(path, progress)
        if client.head(f"/api/blobs/{digest}") == 200:
            return digest
        size = path.stat().st_size
        task = progress.add_task(f"copying {path.name}", total=size)
        with open(path, "rb") as f:
            client.upload(f"/api/blobs/{digest}", _ProgressReader(f, progress, task), size)
    return digest


def build_request(client: Client, name: str, modelfile: Path) -> dict:
    try:
        mf = parse_modelfile(modelfile.read_bytes())
    except OSError as exc:
        raise ClientError(f"could not read Modelfile: {exc.strerror}: {modelfile}") from None
    except ModelfileError as exc:
        raise ClientError(f"{modelfile}: {exc}") from None
    for warning in mf.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        return create_body(name, mf, modelfile.parent, lambda path: upload_blob(client, path))
    except ModelfileSourceError as exc:
        raise ClientError(str(exc)) from None


def run_create(client: Client, name: str, modelfile: Path, quantize: str | None) -> None:
    req = build_request(client, name, modelfile)
    if quantize:
        req["quantize"] = quantize
    for update in client.stream("/api/create", req):
        status = update.get("status", "")
        print(status)
