"""The on-disk model store, in Ollama's layout so that an existing ``~/.ollama/models`` works as is.

    <root>/blobs/sha256-<hex>                                  content-addressed files
    <root>/manifests/<host>/<namespace>/<model>/<tag>          one JSON manifest per model name

Every file appears by an atomic rename of a fully written, fsynced temp file, so a crash or a
concurrent writer never leaves a torn blob or manifest under its real name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .digests import blob_filename, normalize_digest
from .manifest import Manifest
from .names import ModelName

try:  # Advisory locks tell a live writer's temp file from a crashed one's; POSIX only.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

TEMP_PREFIX = ".partial-"  # starts with "." so it can never parse as a blob or a model name
CHUNK = 1 << 20
# A temp file younger than this may belong to a writer that has not locked it yet.
_TEMP_GRACE_S = 60.0 if fcntl else 3600.0


class StoreError(Exception):
    pass


class DigestMismatch(StoreError):
    def __init__(self, expected: str, got: str):
        super().__init__(f"digest mismatch, expected {expected}, got {got}")
        self.expected, self.got = expected, got


class BlobNotFound(StoreError, FileNotFoundError):
    pass


@dataclass
class StoredModel:
    name: ModelName  # as spelled on disk
    manifest: Manifest
    digest: str  # sha256 hex of the manifest file, as Ollama's /api/tags shows it
    modified_at: datetime
    size: int
    path: Path | None = None  # the manifest file


def fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, hence best effort.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _open_temp(directory: Path):
    """Create and lock a fresh temp file in ``directory``; returns (path, binary file)."""
    path = directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    f = open(path, "xb")
    if fcntl:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass  # e.g. a file system without locks: cleanup's age check still protects us
    return path, f


def unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


class BlobWriter:
    """Streams one blob into a temp file, hashing as it goes; ``commit`` publishes it."""

    def __init__(self, store: "Store"):
        self._store = store
        self._path, self._file = _open_temp(store.blobs_dir)
        self._hash = hashlib.sha256()
        self.bytes_written = 0
        self._done = False

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.bytes_written += len(data)

    def commit(self, expected_digest: str | None = None) -> tuple[str, int]:
        if self._done:
            raise StoreError("blob writer already finished")
        digest = "sha256:" + self._hash.hexdigest()
        try:
            if expected_digest is not None and normalize_digest(expected_digest) != digest:
                raise DigestMismatch(normalize_digest(expected_digest), digest)
            self._file.flush()
            os.fsync(self._file.fileno())
            final = self._store.blob_path(digest)
            # Same digest means same bytes, so an existing blob is kept; one of another size
            # is a leftover of a torn write (not ours) and is replaced.
            if final.is_file() and final.stat().st_size == self.bytes_written:
                self._discard()
                os.utime(final)  # freshly wanted: the startup prune's grace counts from now
            else:
                os.chmod(self._path, 0o644)
                os.replace(self._path, final)
                self._close()
                fsync_dir(self._store.blobs_dir)
        except BaseException:
            self._discard()
            self._done = True
            raise
        self._done = True
        return digest, self.bytes_written

    def abort(self) -> None:
        if not self._done:
            self._discard()
            self._done = True

    def _close(self) -> None:
        if not self._file.closed:
            self._file.close()  # also releases the lock

    def _discard(self) -> None:
        # Unlink before closing, so that cleanup never sees an unlocked temp file of ours.
        unlink_quietly(self._path)
        self._close()

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


class Store:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs"
        self.manifests_dir = self.root / "manifests"
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        # Serialises "which blobs are referenced" decisions (delete, prune) with manifest writes, so a
        # delete never removes a blob that a create committed and is about to reference.
        self._references = threading.RLock()

    # ---- blobs

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / blob_filename(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_writer(self) -> BlobWriter:
        return BlobWriter(self)

    def add_blob_file(self, path: Path | str) -> tuple[str, int]:
        with open(path, "rb") as src, self.blob_writer() as writer:
            while chunk := src.read(CHUNK):
                writer.write(chunk)
            return writer.commit()

    def add_blob_bytes(self, data: bytes) -> tuple[str, int]:
        with self.blob_writer() as writer:
            writer.write(data)
            return writer.commit()

    def add_json_blob(self, obj) -> tuple[str, int]:
        # Compact, and in the caller's key order: the same object always gives the same digest.
        data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        return self.add_blob_bytes(data)

    def read_blob_bytes(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"blob not found: {normalize_digest(digest)}") from None

    # ---- manifests

    def _existing_path(self, name: ModelName) -> Path | None:
        """The manifest file for ``name``, matching each path part case-insensitively."""
        name = _checked(name)
        exact = self.manifests_dir.joinpath(*name.parts)
        if exact.is_file():
            return exact
        path = self.manifests_dir
        for part in name.parts:
            path = self._child_ignoring_case(path, part)
            if path is None:
                return None
        return path if path.is_file() else None

    @staticmethod
    def _child_ignoring_case(directory: Path, part: str) -> Path | None:
        if (directory / part).exists():
            return directory / part
        try:
            entries = sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return None
        wanted = part.lower()
        return next((directory / e for e in entries if e.lower() == wanted), None)

    def _load(self, name: ModelName, path: Path) -> StoredModel:
        data = path.read_bytes()
        stat = path.stat()
        manifest = Manifest.from_bytes(data)
        return StoredModel(
            name=name,
            manifest=manifest,
            digest=hashlib.sha256(data).hexdigest(),
            modified_at=datetime.fromtimestamp(stat.st_mtime).astimezone(),
            size=manifest.total_size,
            path=path,
        )

    def _name_of(self, path: Path) -> ModelName:
        return ModelName.from_parts(*path.relative_to(self.manifests_dir).parts)

    def find(self, name: ModelName) -> StoredModel | None:
        path = self._existing_path(name)
        if path is None:
            return None
        try:
            return self._load(self._name_of(path), path)
        except FileNotFoundError:
            return None  # deleted meanwhile
        except (OSError, ValueError) as exc:
            raise StoreError(f"invalid manifest for {name.display}: {exc}") from exc

    def write_manifest(self, name: ModelName, manifest: Manifest) -> None:
        # Reuse directories (and a manifest) that exist under another case, as Ollama does, so
        # that names differing only in case never coexist.
        name = _checked(name)
        directory = self.manifests_dir
        for part in name.parts[:-1]:
            directory = self._child_ignoring_case(directory, part) or directory / part
        directory.mkdir(parents=True, exist_ok=True)
        final = self._child_ignoring_case(directory, name.tag) or directory / name.tag
        with self._references:
            missing = [d for d in sorted(manifest.digests()) if not self.has_blob(d)]
            if missing:
                raise StoreError(f"blob {missing[0]} is missing (removed while {name.display} was being written);"
                                 " try again")
            self._write_file(directory, final, manifest.to_bytes())

    @staticmethod
    def _write_file(directory: Path, final: Path, data: bytes) -> None:
        tmp, f = _open_temp(directory)
        try:
            with f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, final)
        except BaseException:
            unlink_quietly(tmp)
            raise
        fsync_dir(directory)

    def delete(self, name: ModelName) -> bool:
        stored = self.find(name)
        if stored is None:
            return False
        with self._references:
            stored.path.unlink()
            self._prune_empty_dirs(stored.path.parent)
            try:
                still_used = self.referenced_digests(strict=True)
            except StoreError as exc:
                # Unknown references: keeping blobs wastes disk, deleting them could break a model.
                log.warning("not removing blobs of %s: %s", name.display, exc)
                return True
            for digest in stored.manifest.digests() - still_used:
                unlink_quietly(self.blob_path(digest))
        return True

    def _prune_empty_dirs(self, directory: Path) -> None:
        while directory != self.manifests_dir and self.manifests_dir in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return  # not empty (or gone): stop climbing
            directory = directory.parent

    def _manifest_files(self):
        """Paths of manifests/<host>/<ns>/<model>/<tag>, skipping hidden files (our temps)."""
        for path in self.manifests_dir.glob("*/*/*/*"):
            if any(p.startswith(".") for p in path.relative_to(self.manifests_dir).parts):
                continue
            if path.is_file():
                yield path

    def _iter_models(self, strict: bool):
        for path in self._manifest_files():
            try:
                yield self._load(self._name_of(path), path)
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                if strict:
                    raise StoreError(f"unreadable manifest {path}: {exc}") from exc
                log.warning("skipping unreadable manifest %s: %s", path, exc)

    def list_models(self) -> list[StoredModel]:
        models = list(self._iter_models(strict=False))
        models.sort(key=lambda m: m.modified_at, reverse=True)
        return models

    def referenced_digests(self, strict: bool = False) -> set[str]:
        """Digests any manifest uses; with ``strict``, an unreadable manifest raises StoreError."""
        used: set[str] = set()
        for model in self._iter_models(strict):
            used |= model.manifest.digests()
        return used

    # ---- startup

    def prune_unreferenced_blobs(self, grace_s: float) -> list[Path]:
        """Blobs no manifest names and not modified for `grace_s` seconds (left by a create or delete that
        died half way). Younger ones are kept: an upload may be waiting for its /api/create, or another
        process sharing the store may be writing. Nothing is removed when any manifest is unreadable."""
        removed = []
        with self._references:
            try:
                used = self.referenced_digests(strict=True)
            except StoreError as exc:
                log.warning("not pruning blobs: %s", exc)
                return []
            now = time.time()
            for path in self.blobs_dir.iterdir():
                name = path.name
                if not name.startswith("sha256-") or len(name) != 71 or not all(c in "0123456789abcdef" for c in name[7:]):
                    continue  # temp files and names we do not own
                if "sha256:" + name[7:] in used:
                    continue
                try:
                    if now - path.stat().st_mtime < grace_s or not path.is_file():
                        continue
                    path.unlink()
                    removed.append(path)
                except FileNotFoundError:
                    continue
        return removed

    def cleanup(self) -> list[Path]:
        """Remove temp files that crashed writers left behind; never a blob or a live temp."""
        removed = []
        temps = list(self.blobs_dir.glob(TEMP_PREFIX + "*"))
        temps += self.manifests_dir.rglob(TEMP_PREFIX + "*")
        for path in temps:
            if _remove_if_abandoned(path):
                removed.append(path)
        return removed


def _checked(name: ModelName) -> ModelName:
    # A ModelName built directly (not parsed) could hold "..": revalidate before making a path.
    return ModelName.from_parts(*name.parts)


def _remove_if_abandoned(path: Path) -> bool:
    try:
        if time.time() - path.stat().st_mtime < _TEMP_GRACE_S or not path.is_file():
            return False
        with open(path, "rb") as f:
            if fcntl:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    return False  # a live writer holds it (or locks cannot tell: keep it)
            path.unlink()
        return True
    except FileNotFoundError:
        return False
