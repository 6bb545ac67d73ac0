"""Pulling GGUF models from Hugging Face: ``hf.co/<user>/<repo>[:<quant or file name>]``.

The repository's file listing picks one GGUF: the tag names a quantization (``Q4_K_M``, ``q8_0``,
matched case-insensitively as a word of the file name) or a file (``model-Q4_K_M.gguf``);
``latest`` (no tag) means Q4_K_M when the repository has it, else its only GGUF, else the first of
``QUANT_PREFERENCE`` found. Split GGUFs and projectors (``mmproj``) are not chosen.

huggingface_hub does the Hub's part, honouring ``HF_ENDPOINT`` and ``HF_TOKEN`` (and its stored
token) as it always does: the file listing (with each LFS file's sha256), the file's URL and
redirects (authorization kept on Hub hosts, dropped for a CDN's signed URL, as it does), and its
cache (``HF_HOME`` / ``HF_HUB_CACHE``): a file that is there already is linked into the store, not
downloaded again. The bytes themselves come through registry/pull.py's downloader, as a registry
blob's do: parallel ranged parts, resumed after a dropped connection or a killed daemon,
sha256-checked before they enter the store. (huggingface_hub 2.x does not resume across processes:
each process writes to a temp file of its own and removes it on failure.) The caller creates the
model from the GGUF, which reads its chat template.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urljoin, urlsplit

import aiohttp

from .names import ModelName
from .oci import NETWORK_ERRORS, REDIRECT_STATUS, TransientError, status_error
from .pull import Transfers, download_blob
from .store import Store

log = logging.getLogger(__name__)

Progress = Callable[[dict], None]

HF_HOSTS = ("hf.co", "huggingface.co")
DEFAULT_QUANT = "Q4_K_M"
QUANT_PREFERENCE = ("Q4_K_M", "Q4_K_S", "Q4_0", "IQ4_XS", "IQ4_NL", "Q5_K_M", "Q5_K_S", "Q5_0", "Q6_K", "Q8_0",
                    "Q3_K_M", "Q3_K_L", "Q3_K_S", "Q2_K", "BF16", "F16", "F32")
_SHARD_RE = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)


class HFError(Exception):
    """A pull from Hugging Face that cannot succeed (the message is for users)."""

    def __init__(self, message: str, status: int = 500):
        super().__init__(message)
        self.status = status


@dataclass
class HFFile:
    path: str
    size: int
    sha256: str | None  # from the LFS pointer; None for a file stored in git itself

    @property
    def basename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def is_hf_name(name: ModelName) -> bool:
    return name.host.lower() in HF_HOSTS


def _endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or None  # None: huggingface_hub looks for its stored token


def _translate(exc: Exception, repo_id: str) -> Exception:
    from huggingface_hub.errors import (
        EntryNotFoundError, GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return HFError(f"hf.co/{repo_id} is gated: accept its terms on Hugging Face and set HF_TOKEN", 403)
    if isinstance(exc, RepositoryNotFoundError):
        return HFError(f"pull model manifest: hf.co/{repo_id} not found (a private repository needs HF_TOKEN)", 404)
    if isinstance(exc, (RevisionNotFoundError, EntryNotFoundError)):
        return HFError(f"pull model manifest: file does not exist in hf.co/{repo_id}", 404)
    text = f"hf.co/{repo_id}: {exc}".splitlines()[0]
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return TransientError(text, status) if status and status >= 500 else HFError(text, 502)
    return TransientError(text)  # the Hub could not be reached: worth another try


def list_gguf_files(repo_id: str, *, endpoint: str | None = None, token: str | None = None) -> list[HFFile]:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint or _endpoint(), token=token or _token())
    try:
        entries = list(api.list_repo_tree(repo_id, recursive=True))
    except Exception as exc:  # huggingface_hub raises many kinds; all end the pull
        raise _translate(exc, repo_id) from exc
    files = []
    for entry in entries:
        if not isinstance(entry, RepoFile) or not entry.path.lower().endswith(".gguf"):
            continue
        lfs = entry.lfs
        files.append(HFFile(entry.path, int(entry.size or 0), getattr(lfs, "sha256", None) if lfs else None))
    return files


def _word_re(word: str) -> re.Pattern:
    # "Q4_K" must not match "Q4_K_M": a quant ends where no letter, digit or "_" follows.
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9_])", re.IGNORECASE)


def choose_file(files: list[HFFile], tag: str, repo_id: str) -> HFFile:
    """The GGUF that ``tag`` names (see the module doc); HFError when there is none."""
    candidates = [f for f in files if "mmproj" not in f.basename.lower()]
    singles = [f for f in candidates if not _SHARD_RE.search(f.basename)]
    if not candidates:
        raise HFError(f"hf.co/{repo_id} has no GGUF files", 404)

    def pick(pool: list[HFFile]) -> HFFile | None:
        # Files at the top of the repository first, then the shortest name.
        return min(pool, key=lambda f: (f.path.count("/"), len(f.basename), f.path)) if pool else None

    if tag.lower().endswith(".gguf"):
        found = pick([f for f in candidates if f.basename.lower() == tag.lower() or f.path.lower() == tag.lower()])
    elif tag.lower() == "latest":
        found = pick([f for f in singles if _word_re(DEFAULT_QUANT).search(f.basename)])
        if found is None and len(singles) == 1:
            found = singles[0]
        for quant in QUANT_PREFERENCE if found is None else ():
            found = pick([f for f in singles if _word_re(quant).search(f.basename)])
            if found:
                break
        found = found or pick(singles)
    else:
        found = pick([f for f in candidates if _word_re(tag).search(f.basename)])
    if found is None:
        names = ", ".join(sorted(f.path for f in candidates)[:20])
        raise HFError(f"no GGUF file for '{tag}' in hf.co/{repo_id} (it has: {names})", 404)
    if _SHARD_RE.search(found.basename):
        raise HFError(f"{found.path} in hf.co/{repo_id} is split in several files; split GGUFs are not supported yet",
                      400)
    return found


class HFSource:
    """A file of a Hub repository as registry/pull.py's downloader reads it."""

    refreshable = True  # a CDN's signed URL expires: ask the Hub again

    def __init__(self, session: aiohttp.ClientSession, repo_id: str, path: str, *, endpoint: str,
                 token: str | None):
        self.session, self.repo_id, self.path, self.endpoint, self.token = session, repo_id, path, endpoint, token
        self.url: str | None = None
        self.headers: dict[str, str] = {}

    async def resolve(self) -> None:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        url = hf_hub_url(self.repo_id, self.path, endpoint=self.endpoint)
        try:
            meta = await asyncio.to_thread(get_hf_file_metadata, url, token=self.token, endpoint=self.endpoint)
        except Exception as exc:
            raise _translate(exc, self.repo_id) from exc
        self.url = meta.location or url
        self.headers = {**build_hf_headers(token=self.token), "Accept-Encoding": "identity"}
        if urlsplit(self.url).netloc != urlsplit(url).netloc:
            self.headers.pop("authorization", None)  # a signed storage URL needs none, and gets none

    async def open(self, start: int = 0, end: int | None = None) -> aiohttp.ClientResponse:
        if self.url is None:
            await self.resolve()
        url, headers = self.url, dict(self.headers)
        if start or end is not None:
            headers["Range"] = f"bytes={start}-" + ("" if end is None else str(end))
        what = f"pull {self.path}"
        for _ in range(10):
            try:
                resp = await self.session.get(url, headers=headers, allow_redirects=False)
            except NETWORK_ERRORS as exc:
                raise TransientError(f"{what}: {exc or type(exc).__name__}") from exc
            if resp.status in (200, 206):
                return resp
            if resp.status in REDIRECT_STATUS and resp.headers.get("Location"):
                resp.release()
                new = urljoin(url, resp.headers["Location"])
                if urlsplit(new).netloc != urlsplit(url).netloc:
                    headers.pop("authorization", None)
                url = new
                continue
            try:
                raw = await resp.read()
            finally:
                resp.release()
            raise status_error(resp.status, what, raw, resp.reason)
        raise HFError(f"{what}: too many redirects")


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _add_to_store(store: Store, path: str, digest: str) -> None:
    """Puts the verified file at ``path`` into the store as ``digest``: a hard link (huggingface_hub
    never rewrites a cached file in place), else a copy through the store's writer."""
    final = store.blob_path(digest)
    if final.is_file():
        return
    try:
        os.link(path, final)
        return
    except FileExistsError:
        return
    except OSError:
        pass
    with open(path, "rb") as src, store.blob_writer() as writer:
        while chunk := src.read(8 << 20):
            writer.write(chunk)
        writer.commit(digest)


def _from_hub_cache(store: Store, repo_id: str, file: HFFile, digest: str | None) -> str | None:
    """The file from huggingface_hub's cache into the store, when it is there (and intact)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, file.path)
    except Exception:  # an unreadable cache is no reason to fail the pull
        return None
    if not isinstance(cached, str) or not os.path.isfile(cached):
        return None
    path = os.path.realpath(cached)
    got = _sha256_file(path)
    if digest and got != digest:
        log.warning("ignoring %s in the Hugging Face cache: its sha256 is not the repository's", path)
        return None
    _add_to_store(store, path, got)
    return got


def _download_with_hub(store: Store, repo_id: str, file: HFFile, endpoint: str, token: str | None) -> str:
    """A GGUF kept in git itself (no LFS sha256 to check against: small by nature)."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id, file.path, endpoint=endpoint, token=token)
    except Exception as exc:
        raise _translate(exc, repo_id) from exc
    path = os.path.realpath(path)
    digest = _sha256_file(path)
    _add_to_store(store, path, digest)
    return digest


async def pull_gguf(store: Store, name: ModelName, progress: Progress, transfers: Transfers, *,
                    endpoint: str | None = None, token: str | None = None) -> tuple[str, str]:
    """Brings the GGUF that ``name`` asks for into the store; returns (file name, digest)."""
    repo_id = f"{name.namespace}/{name.model}"
    endpoint, token = endpoint or _endpoint(), token or _token()
    progress({"status": "pulling manifest"})
    files = await asyncio.to_thread(list_gguf_files, repo_id, endpoint=endpoint, token=token)
    chosen = choose_file(files, name.tag, repo_id)
    digest = f"sha256:{chosen.sha256}" if chosen.sha256 else None
    if digest is None:
        progress({"status": f"pulling {chosen.basename}"})
        digest = await asyncio.to_thread(_download_with_hub, store, repo_id, chosen, endpoint, token)
    elif store.has_blob(digest) or await asyncio.to_thread(_from_hub_cache, store, repo_id, chosen, digest):
        size = store.blob_path(digest).stat().st_size
        progress({"status": f"pulling {digest[7:19]}", "digest": digest, "total": size, "completed": size})
    else:
        log.info("downloading %s from hf.co/%s", chosen.path, repo_id)
        progress({"status": f"pulling {digest[7:19]}", "digest": digest, "total": chosen.size, "completed": 0})
        await download_blob(transfers, store, digest, chosen.size,
                            lambda: HFSource(transfers.session, repo_id, chosen.path, endpoint=endpoint, token=token),
                            progress)
    progress({"status": "verifying sha256 digest"})  # done as the bytes arrived
    return chosen.basename, digest
