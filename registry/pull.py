"""Pulling a model from an OCI registry into the store, as Ollama does.

Progress goes to a callback as Ollama's stream shapes it: ``{"status": "pulling manifest"}``, then per
blob ``{"status": "pulling <12 hex>", "digest", "total", "completed"}``, then ``verifying sha256
digest``, ``writing manifest``, (``removing unused layers``) and ``success``.

Blobs of ``SMALL_BLOB`` bytes or more are downloaded in parallel ranged parts (at most
``Transfers.streams`` requests at once in the whole daemon: ``LM_MAX_TRANSFER_STREAMS``) into
resumable partial files under ``<models>/partial/``, outside ``blobs/`` so that the store never sees
them and its cleanup never removes them:

    <models>/partial/sha256-<hex>         the blob's bytes, written at their offsets (sparse)
    <models>/partial/sha256-<hex>.json    which bytes of each part are on disk

A killed daemon or a dropped connection resumes from there; a part's failed request is retried with
backoff. The bytes are hashed while they arrive (the contiguous prefix) and the blob only enters the
store, by a rename, once its sha256 matches. A process holds an advisory lock on the partial file
while it downloads, so two daemons on one store do not write it at once; within a daemon, two pulls
of one blob share a single download. Smaller blobs take one GET straight into the store's writer.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import aiohttp

from .digests import blob_filename
from .manifest import Layer, Manifest
from .names import ModelName
from .oci import (
    NETWORK_ERRORS, Credential, RegistryClient, RegistryError, TokenCache, TransientError, Unauthorized,
    CredentialSource, new_session,
)
from .store import DigestMismatch, Store, StoreError, fsync_dir, unlink_quietly

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

Progress = Callable[[dict], None]

PARTIAL_DIR = "partial"
MiB = 1 << 20
SMALL_BLOB = 8 * MiB  # below this, one plain GET
MIN_PART, MAX_PART, TARGET_PARTS = 8 * MiB, 512 * MiB, 64
MAX_RETRIES = 6  # failed attempts in a row (an attempt that made progress resets the count)
WRITE_BUFFER = 1 * MiB
HASH_STEP = 8 * MiB
STATE_INTERVAL = 0.5  # seconds between saves of a download's part state
PROGRESS_INTERVAL = 0.1
DEFAULT_STREAMS = 8


class PullError(Exception):
    pass


class BlobDigestMismatch(PullError):
    def __init__(self, want: str, got: str):
        # Ollama's message.
        super().__init__(f"digest mismatch, file must be downloaded again: want {want}, got {got}")
        self.want, self.got = want, got


def backoff(attempt: int, base: float = 0.5, cap: float = 10.0) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...): doubling, jittered by +-50%."""
    return min(base * 2 ** (attempt - 1), cap) * random.uniform(0.5, 1.5)


async def with_retries(what: str, call, retries: int = 3):
    """``await call()``, retried with backoff on transient errors."""
    for attempt in range(1, retries + 2):
        try:
            return await call()
        except (TransientError, *NETWORK_ERRORS) as exc:
            if attempt > retries:
                if isinstance(exc, TransientError):
                    raise
                raise TransientError(f"{what}: {exc or type(exc).__name__}") from exc
            delay = backoff(attempt)
            log.info("%s failed (%s), retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)


class Transfers:
    """What one daemon's transfers share: the HTTP session, bearer tokens, the stream budget and the
    downloads in flight (so two pulls of one blob share one download)."""

    def __init__(self, streams: int = DEFAULT_STREAMS, user_agent: str = "lm",
                 credentials: CredentialSource = CredentialSource()):
        self.streams = max(1, int(streams))
        self.user_agent = user_agent
        self.credentials = credentials
        self.tokens = TokenCache()
        self.downloads: dict[tuple[str, str], BlobDownload] = {}
        self._session = None
        self._sem: asyncio.Semaphore | None = None

    @property
    def sem(self) -> asyncio.Semaphore:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.streams)
        return self._sem

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = new_session()
        return self._session

    def client(self, host: str, insecure: bool, credentials: dict[str, Credential] | None = None) -> RegistryClient:
        return RegistryClient(host, insecure=insecure, credentials=credentials, session=self.session,
                              tokens=self.tokens, user_agent=self.user_agent)

    async def close(self) -> None:
        for download in list(self.downloads.values()):
            if download.task and not download.task.done():
                download.task.cancel()
        if self._session is not None:
            await self._session.close()


# ---- one blob ---------------------------------------------------------------------------------

@dataclass
class Part:
    offset: int
    size: int
    completed: int = 0

    @property
    def done(self) -> bool:
        return self.completed >= self.size


def plan_parts(total: int) -> list[Part]:
    size = min(max(-(-total // TARGET_PARTS), MIN_PART), MAX_PART)
    size = -(-size // MiB) * MiB
    return [Part(offset, min(size, total - offset)) for offset in range(0, total, size)]


class BlobSource(Protocol):
    """Where a blob's bytes come from: ``open`` GETs them (from ``start`` to ``end`` inclusive when a
    range is asked), answering 200 or 206; ``resolve`` finds (again) where to ask, e.g. a storage
    URL that a redirect names, which may expire: ``refreshable`` says whether an auth refusal is
    worth a new ``resolve``."""

    refreshable: bool

    async def resolve(self) -> None: ...

    async def open(self, start: int = 0, end: int | None = None) -> aiohttp.ClientResponse: ...


class OCISource:
    def __init__(self, client: RegistryClient, repo: str, digest: str):
        self.client, self.repo, self.digest = client, repo, digest
        self.url, self.auth = client.url(repo, "blobs", digest), True

    @property
    def refreshable(self) -> bool:
        return not self.auth  # a storage backend's URL, not the registry's own

    async def resolve(self) -> None:
        self.url, self.auth = await with_retries(
            f"pull blob {self.digest[7:19]}", lambda: self.client.resolve_blob(self.repo, self.digest))

    async def open(self, start: int = 0, end: int | None = None) -> aiohttp.ClientResponse:
        return await self.client.open_blob(self.url, repo=self.repo, auth=self.auth, start=start, end=end,
                                           what=f"pull blob {self.digest[7:19]}")


class BlobDownload:
    def __init__(self, transfers: Transfers, store: Store, source: BlobSource, digest: str, total: int):
        self.transfers, self.store, self.source = transfers, store, source
        self.digest, self.total = digest, total
        self.completed = 0
        self.refs = 0
        self.abandoned = False
        self.task: asyncio.Task | None = None
        self._dirty = False
        self._key = (str(store.root), digest)

    # -- sharing ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())
        self.task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        if self.transfers.downloads.get(self._key) is self:
            del self.transfers.downloads[self._key]
        if not task.cancelled():
            task.exception()  # marks it retrieved: the waiters, if any, raise it themselves

    def progress_event(self) -> dict:
        return {"status": f"pulling {self.digest[7:19]}", "digest": self.digest, "total": self.total,
                "completed": min(self.completed, self.total)}

    async def wait(self, progress: Progress) -> None:
        self.refs += 1
        try:
            while True:
                done, _ = await asyncio.wait({self.task}, timeout=PROGRESS_INTERVAL)
                if done:
                    self.task.result()  # raises the download's error
                    progress(self.progress_event())
                    return
                progress(self.progress_event())
        finally:
            self.refs -= 1
            if self.refs == 0 and not self.task.done():
                # Nobody waits any more (clients gone): stop; the partial file keeps what arrived.
                self.abandoned = True
                if self.transfers.downloads.get(self._key) is self:
                    del self.transfers.downloads[self._key]
                self.task.cancel()

    # -- the download ----------------------------------------------------------------------------

    async def _run(self) -> None:
        if self.total < SMALL_BLOB:
            await self._small()
        else:
            await self._large()
        self.completed = self.total

    async def _small(self) -> None:
        attempt = 0
        while True:
            try:
                await self._small_once()
                return
            except (TransientError, *NETWORK_ERRORS) as exc:
                self.completed = 0
                attempt += 1
                if attempt > MAX_RETRIES:
                    raise PullError(f"max retries exceeded: {exc}") from exc
                delay = backoff(attempt)
                log.info("%s: attempt %d failed: %s, retrying in %.1fs", self.digest[7:19], attempt, exc, delay)
                await asyncio.sleep(delay)

    async def _small_once(self) -> None:
        async with self.transfers.sem:
            resp = await self.source.open()
            writer = self.store.blob_writer()
            try:
                async with resp:
                    async for chunk in resp.content.iter_any():
                        writer.write(chunk)
                        self.completed += len(chunk)
                        if writer.bytes_written > self.total:
                            break  # more than the manifest said: the digest check below fails
                await asyncio.to_thread(writer.commit, self.digest)
            except DigestMismatch as exc:
                raise BlobDigestMismatch(self.digest, exc.got) from None
            finally:
                writer.abort()

    async def _large(self) -> None:
        pdir = self.store.root / PARTIAL_DIR
        pdir.mkdir(parents=True, exist_ok=True)
        data_path = pdir / blob_filename(self.digest)
        state_path = pdir / (blob_filename(self.digest) + ".json")
        fd = os.open(data_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not await self._acquire(fd, data_path, state_path):
                return
            retried_fresh = False
            while True:
                parts, resumed = self._prepare(fd, state_path)
                got = await self._fetch_all(fd, parts, state_path)
                if got == self.digest:
                    break
                self._discard(fd, state_path)
                if resumed and not retried_fresh:
                    # The kept bytes may be what went wrong (e.g. a crash before they reached the disk).
                    log.warning("%s: digest mismatch after resuming; downloading it again", self.digest[7:19])
                    retried_fresh = True
                    continue
                unlink_quietly(data_path)  # still ours: we hold the lock
                raise BlobDigestMismatch(self.digest, got)
            await asyncio.to_thread(self._publish, fd, data_path, state_path)
        finally:
            os.close(fd)  # also releases the lock

    async def _acquire(self, fd: int, data_path: Path, state_path: Path) -> bool:
        """Locks the partial file (waiting while another process downloads it); False when the blob
        is in the store already."""
        waited = False
        while fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    break  # no locks on this file system: go on without
            if not waited:
                log.info("%s: another download of this blob is under way; waiting", self.digest[7:19])
                waited = True
            state = _read_state(state_path)
            if state:
                self.completed = sum(p.completed for p in state)
            if self.store.has_blob(self.digest):
                return False
            await asyncio.sleep(0.25)
        if self.store.has_blob(self.digest):
            try:
                if os.stat(data_path).st_ino == os.fstat(fd).st_ino:
                    unlink_quietly(data_path)
                    unlink_quietly(state_path)
            except FileNotFoundError:
                pass
            return False
        return True

    def _prepare(self, fd: int, state_path: Path) -> tuple[list[Part], bool]:
        parts = _read_state(state_path, self.digest, self.total)
        if parts is not None and os.fstat(fd).st_size == self.total:
            done = sum(p.completed for p in parts)
            if done:
                log.info("resuming download of %s at %d of %d bytes", self.digest, done, self.total)
            self.completed = done
            return parts, done > 0
        os.ftruncate(fd, 0)
        os.ftruncate(fd, self.total)  # sparse where the file system allows
        parts = plan_parts(self.total)
        _write_state(state_path, self.digest, self.total, parts)
        self.completed = 0
        log.info("downloading %s in %d part(s) of %d MiB", self.digest[7:19], len(parts), parts[0].size // MiB)
        return parts, False

    def _discard(self, fd: int, state_path: Path) -> None:
        unlink_quietly(state_path)
        os.ftruncate(fd, 0)
        self.completed = 0

    async def _fetch_all(self, fd: int, parts: list[Part], state_path: Path) -> str:
        hasher = _PrefixHasher(fd, parts, self.total)
        hash_task = asyncio.create_task(hasher.run())
        saver = asyncio.create_task(self._save_periodically(state_path, parts))
        tasks = []
        try:
            if not all(part.done for part in parts):
                await self.source.resolve()
            tasks = [asyncio.create_task(self._fetch_part(fd, part)) for part in parts if not part.done]
            await asyncio.gather(*tasks)
            return "sha256:" + await hash_task
        except BaseException:
            for task in (*tasks, hash_task):
                task.cancel()
            await asyncio.gather(*tasks, hash_task, return_exceptions=True)
            raise
        finally:
            saver.cancel()
            await asyncio.gather(saver, return_exceptions=True)
            if state_path.parent.exists():
                _write_state(state_path, self.digest, self.total, parts)

    async def _save_periodically(self, state_path: Path, parts: list[Part]) -> None:
        while True:
            await asyncio.sleep(STATE_INTERVAL)
            if self._dirty:
                self._dirty = False
                _write_state(state_path, self.digest, self.total, parts)

    async def _fetch_part(self, fd: int, part: Part) -> None:
        failures = 0
        while not part.done:
            before = part.completed
            try:
                async with self.transfers.sem:
                    await self._fetch_range(fd, part)
                continue
            except Unauthorized:
                if not self.source.refreshable:
                    raise
                exc_text = "storage URL refused"  # expired, perhaps: ask where the bytes are again
                await self.source.resolve()
            except (TransientError, *NETWORK_ERRORS) as exc:
                exc_text = str(exc) or type(exc).__name__
            if part.completed > before:
                failures = 0
            failures += 1
            if failures > MAX_RETRIES:
                raise PullError(f"{self.digest[7:19]}: max retries exceeded: {exc_text}")
            delay = backoff(failures)
            log.info("%s part at %d: attempt %d failed: %s, retrying in %.1fs", self.digest[7:19], part.offset,
                     failures, exc_text, delay)
            await asyncio.sleep(delay)

    async def _fetch_range(self, fd: int, part: Part) -> None:
        start, end = part.offset + part.completed, part.offset + part.size - 1
        resp = await self.source.open(start, end)
        async with resp:
            skip = 0
            if resp.status == 200:
                skip = start  # the server ignored the range: drop what comes before it
            else:
                got = _content_range_start(resp.headers.get("Content-Range"))
                if got != start:
                    raise TransientError(f"asked for bytes from {start}, got a range from {got}")
            buf = bytearray()
            async for chunk in resp.content.iter_any():
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk, skip = chunk[skip:], 0
                buf += chunk
                if len(buf) >= WRITE_BUFFER:
                    await self._write(fd, part, buf)
                    buf = bytearray()
                    if part.done:
                        break
            if buf and not part.done:
                await self._write(fd, part, buf)
        if not part.done:
            raise TransientError("connection closed before the part was complete")

    async def _write(self, fd: int, part: Part, buf: bytearray) -> None:
        room = part.size - part.completed
        data = memoryview(buf)[:room]
        offset = part.offset + part.completed
        await asyncio.to_thread(_pwrite_all, fd, data, offset)
        part.completed += len(data)
        self.completed += len(data)
        self._dirty = True

    def _publish(self, fd: int, data_path: Path, state_path: Path) -> None:
        os.fsync(fd)
        final = self.store.blob_path(self.digest)
        try:
            os.chmod(data_path, 0o644)
            os.replace(data_path, final)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # <models>/partial on another file system than blobs/: copy through the store's writer.
            with open(data_path, "rb") as src, self.store.blob_writer() as writer:
                while chunk := src.read(MiB):
                    writer.write(chunk)
                writer.commit(self.digest)
            unlink_quietly(data_path)
        fsync_dir(self.store.blobs_dir)
        unlink_quietly(state_path)


class _PrefixHasher:
    """Hashes the blob's contiguous downloaded prefix while the rest is still arriving."""

    def __init__(self, fd: int, parts: list[Part], total: int):
        self.fd, self.parts, self.total = fd, parts, total
        self.hash = hashlib.sha256()
        self.pos = 0

    def _prefix(self) -> int:
        for part in self.parts:
            if not part.done:
                return part.offset + part.completed
        return self.total

    def _hash_to(self, target: int) -> None:
        while self.pos < target:
            data = os.pread(self.fd, min(HASH_STEP, target - self.pos), self.pos)
            if not data:
                raise OSError(f"partial file shorter than expected at {self.pos}")
            self.hash.update(data)
            self.pos += len(data)

    async def run(self) -> str:
        while True:
            target = self._prefix()
            if target - self.pos >= HASH_STEP or (target == self.total and target > self.pos):
                await asyncio.to_thread(self._hash_to, target)
            elif target == self.total:
                return self.hash.hexdigest()
            else:
                await asyncio.sleep(0.05)


# ---- partial state files ----------------------------------------------------------------------

def _read_state(path: Path, digest: str | None = None, total: int | None = None) -> list[Part] | None:
    try:
        data = json.loads(path.read_text())
        if digest is not None and (data.get("digest") != digest or data.get("total") != total):
            return None
        parts = [Part(int(p["offset"]), int(p["size"]), int(p["completed"])) for p in data["parts"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    offset = 0
    for part in parts:  # must tile [0, total) exactly, or it is not ours
        if part.offset != offset or part.size <= 0 or not 0 <= part.completed <= part.size:
            return None
        offset += part.size
    if total is not None and offset != total:
        return None
    return parts


def _write_state(path: Path, digest: str, total: int, parts: list[Part]) -> None:
    data = {"digest": digest, "total": total,
            "parts": [{"offset": p.offset, "size": p.size, "completed": p.completed} for p in parts]}
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except FileNotFoundError:
        pass  # the partial directory was removed under us


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/1000"
    try:
        return int(value.split()[1].split("-")[0]) if value else None
    except (IndexError, ValueError):
        return None


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def partial_files(store: Store) -> list[Path]:
    """The partial downloads kept for resuming (for tools and tests)."""
    pdir = store.root / PARTIAL_DIR
    return sorted(p for p in pdir.iterdir() if p.is_file()) if pdir.is_dir() else []


# ---- one model --------------------------------------------------------------------------------

def repository(name: ModelName) -> str:
    return f"{name.namespace}/{name.model}"


def manifest_layers(manifest: Manifest) -> list[Layer]:
    """Layers then config, each digest once."""
    seen, out = set(), []
    for layer in (*manifest.layers, manifest.config):
        if layer.digest not in seen:
            seen.add(layer.digest)
            out.append(layer)
    return out


async def download_blob(transfers: Transfers, store: Store, digest: str, size: int,
                        make_source: Callable[[], BlobSource], progress: Progress) -> None:
    """Brings one blob into the store (sharing a download already under way), reporting progress."""
    if store.has_blob(digest):
        size = store.blob_path(digest).stat().st_size
        progress({"status": f"pulling {digest[7:19]}", "digest": digest, "total": size, "completed": size})
        return
    key = (str(store.root), digest)
    download = transfers.downloads.get(key)
    if download is None or download.abandoned:
        download = BlobDownload(transfers, store, make_source(), digest, size)
        transfers.downloads[key] = download
        download.start()
    await download.wait(progress)


async def pull_model(store: Store, name: ModelName, progress: Progress, *, insecure: bool = False,
                     transfers: Transfers | None = None, credentials: dict[str, Credential] | None = None,
                     noprune: bool = False) -> Manifest:
    own = transfers is None
    transfers = transfers or Transfers()
    try:
        progress({"status": "pulling manifest"})
        client = transfers.client(name.host, insecure, transfers.credentials.load() if credentials is None else credentials)
        repo = repository(name)
        raw = await with_retries("pull model manifest", lambda: client.get_manifest(repo, name.tag))
        try:
            manifest = Manifest.from_bytes(raw)
        except ValueError as exc:
            raise PullError(f"pull model manifest: {exc}") from None

        layers = manifest_layers(manifest)
        for layer in layers:  # every bar in manifest order before any moves
            if not store.has_blob(layer.digest):
                progress({"status": f"pulling {layer.digest[7:19]}", "digest": layer.digest, "total": layer.size,
                          "completed": 0})
        tasks = [asyncio.create_task(download_blob(transfers, store, layer.digest, layer.size,
                                                   lambda layer=layer: OCISource(client, repo, layer.digest), progress))
                 for layer in layers]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

        # Every blob was hashed before it entered the store; what is there now is what was asked for.
        progress({"status": "verifying sha256 digest"})
        missing = [layer.digest for layer in layers if not store.has_blob(layer.digest)]
        if missing:
            raise PullError(f"blob {missing[0]} missing after download")
        progress({"status": "writing manifest"})
        replaced = await asyncio.to_thread(store.write_manifest, name, manifest)

        if replaced is not None and not noprune:
            unused = replaced.digests() - manifest.digests()
            if unused:
                progress({"status": "removing unused layers"})
                try:
                    await asyncio.to_thread(store.remove_unused, unused, f"replaced by {name.display}")
                except (OSError, StoreError) as exc:
                    progress({"status": f"couldn't remove unused layers: {exc.strerror if isinstance(exc, OSError) else exc}"})
        progress({"status": "success"})
        return manifest
    except RegistryError as exc:
        raise PullError(str(exc)) from None
    finally:
        if own:
            await transfers.close()

