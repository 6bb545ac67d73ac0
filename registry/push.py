"""Pushing a model from the store to an OCI registry, as Ollama does.

Progress: ``retrieving manifest``, per blob ``{"status": "pushing <12 hex>", "digest", "total",
"completed"}``, ``pushing manifest``, ``success``. Each blob is first asked for with HEAD (present:
nothing to send); a blob the registry holds in another repository we know of (a model of ours on the
same host has it) is mounted across repositories; the rest is uploaded, in one PUT up to
``UPLOAD_CHUNK`` bytes and in PATCHed chunks above, a failed chunk resuming from what the registry
says it holds. The manifest goes last, byte for byte as it is in the store.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .manifest import Layer
from .names import InvalidName, ModelName
from .oci import NETWORK_ERRORS, Credential, RegistryClient, RegistryError, TransientError
from .pull import MAX_RETRIES, MiB, Progress, PullError, Transfers, backoff, manifest_layers, repository, with_retries
from .store import Store, StoreError

log = logging.getLogger(__name__)

UPLOAD_CHUNK = 64 * MiB
READ_SIZE = 1 * MiB


class PushError(PullError):
    pass


class _Counter:
    """Bytes of one blob sent so far, reported at most every 0.1 s."""

    def __init__(self, digest: str, total: int, progress: Progress):
        self.digest, self.total, self.progress = digest, total, progress
        self.completed = 0
        self._last = 0.0

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= 0.1:
            self._last = now
            self.progress({"status": f"pushing {self.digest[7:19]}", "digest": self.digest, "total": self.total,
                           "completed": min(self.completed, self.total)})

    def add(self, n: int) -> None:
        self.completed += n
        self.report()


def _file_body(path, offset: int, size: int, counter: _Counter):
    """A body factory: each call gives a fresh stream of ``size`` bytes of ``path`` from ``offset``,
    counting what it sends (and taking back what a failed attempt had counted)."""
    state = {"sent": 0}

    def make():
        counter.completed -= state["sent"]
        state["sent"] = 0

        async def gen():
            with open(path, "rb") as f:
                f.seek(offset)
                left = size
                while left > 0:
                    chunk = await asyncio.to_thread(f.read, min(READ_SIZE, left))
                    if not chunk:
                        raise OSError(f"{path} is shorter than expected")
                    left -= len(chunk)
                    state["sent"] += len(chunk)
                    counter.add(len(chunk))
                    yield chunk
        return gen()
    return make


def _mount_source(store: Store, name: ModelName, layer: Layer) -> str | None:
    """Another repository on the same registry that should hold this blob: the layer's ``from``, or
    a model of ours from that registry that uses it."""
    if layer.from_:
        try:
            source = ModelName.parse(layer.from_)
            if source.host.lower() == name.host.lower() and repository(source) != repository(name):
                return repository(source)
        except InvalidName:
            pass
    for model in store.list_models():
        if model.name.host.lower() != name.host.lower() or repository(model.name).lower() == repository(name).lower():
            continue
        if layer.digest in model.manifest.digests():
            return repository(model.name)
    return None


async def _upload_blob(client: RegistryClient, store: Store, name: ModelName, layer: Layer, progress: Progress) -> None:
    repo = repository(name)
    path = store.blob_path(layer.digest)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise PushError(f"blob {layer.digest} of {name.display} is missing from the store") from None
    counter = _Counter(layer.digest, size, progress)
    if await with_retries("check blob", lambda: client.blob_exists(repo, layer.digest)):
        counter.completed = size
        counter.report(force=True)
        return
    source = _mount_source(store, name, layer)
    location = await with_retries("start upload", lambda: client.start_upload(repo, mount=layer.digest,
                                                                                 mount_from=source))
    if location is None:
        log.info("mounted %s from %s", layer.digest[7:19], source)
        counter.completed = size
        counter.report(force=True)
        return
    counter.report(force=True)
    if size <= UPLOAD_CHUNK:
        body = _file_body(path, 0, size, counter)
        session = {"location": location}

        async def monolithic():
            # A failed PUT may leave part of the body in its session: a retry opens a new one.
            url = session.pop("location", None) or await client.start_upload(repo)
            await client.finish_upload(url, layer.digest, repo=repo, body=body, size=size)

        await with_retries("upload blob", monolithic)
    else:
        offset, failures = 0, 0
        while offset < size:
            n = min(UPLOAD_CHUNK, size - offset)
            try:
                location = await client.upload_chunk(location, _file_body(path, offset, n, counter)(), offset, n,
                                                     repo=repo)
                offset += n
                failures = 0
            except (TransientError, *NETWORK_ERRORS) as exc:
                failures += 1
                if failures > MAX_RETRIES:
                    raise PushError(f"upload of {layer.digest[7:19]}: max retries exceeded: {exc}") from exc
                await asyncio.sleep(backoff(failures))
                location, offset = await with_retries("upload status", lambda: client.upload_status(location, repo=repo))
                counter.completed = offset
        await with_retries("finish upload", lambda: client.finish_upload(location, layer.digest, repo=repo))
    counter.completed = size
    counter.report(force=True)


async def push_model(store: Store, name: ModelName, progress: Progress, *, insecure: bool = False,
                     transfers: Transfers | None = None, credentials: dict[str, Credential] | None = None) -> None:
    own = transfers is None
    transfers = transfers or Transfers()
    try:
        progress({"status": "retrieving manifest"})
        try:
            stored = store.find(name)
        except StoreError as exc:
            progress({"status": "couldn't retrieve manifest"})
            raise PushError(str(exc)) from None
        if stored is None:
            progress({"status": "couldn't retrieve manifest"})
            raise PushError(f"model '{name.display}' not found")
        raw = stored.path.read_bytes()  # exactly what we have, so the registry's digest is ours
        client = transfers.client(name.host, insecure, transfers.credentials.load() if credentials is None else credentials)
        for layer in manifest_layers(stored.manifest):
            await _upload_blob(client, store, name, layer, progress)
        progress({"status": "pushing manifest"})
        await with_retries("push manifest", lambda: client.put_manifest(repository(name), name.tag, raw,
                                                                         stored.manifest.media_type))
        progress({"status": "success"})
    except RegistryError as exc:
        raise PushError(str(exc)) from None
    finally:
        if own:
            await transfers.close()
