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


def temp_name(what: str = "") -> str:
    """A fresh temp file name that says which process writes it (``.partial-<pid>-...``): the startup
    cleanup removes at once the temps of processes that are gone (see `_remove_if_abandoned`)."""
    return f"{TEMP_PREFIX}{os.getpid()}-{what + '-' if what else ''}{secrets.token_hex(8)}"


def _open_temp(directory: Path):
    """Create and lock a fresh temp file in ``directory``; returns (path, binary file)."""
    path = directory / temp_name()
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

    def __init__(self, store: "Store", hold: "Hold | None" = None):
        self._store = store
        self._hold = hold
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
            # Under the lock of removals, so that a held blob cannot be removed between its placing
            # (or finding it there) and its hold.
            with self._store._references:
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
                if self._hold is not None:
                    self._hold.add(digest)
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
        # Digests that writers in progress (creates: see `hold`) will reference: no removal takes them.
        # Those a removal skipped for that are `_spared`: the last hold on one removes it if still unused.
        self._held: dict[str, int] = {}
        self._spared: set[str] = set()

    # ---- blobs

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / blob_filename(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_writer(self, hold: "Hold | None" = None) -> BlobWriter:
        return BlobWriter(self, hold)

    def add_blob_file(self, path: Path | str, hold: "Hold | None" = None) -> tuple[str, int]:
        with open(path, "rb") as src, self.blob_writer(hold) as writer:
            while chunk := src.read(CHUNK):
                writer.write(chunk)
            return writer.commit()

    def add_blob_bytes(self, data: bytes, hold: "Hold | None" = None) -> tuple[str, int]:
        with self.blob_writer(hold) as writer:
            writer.write(data)
            return writer.commit()

    def add_json_blob(self, obj, hold: "Hold | None" = None) -> tuple[str, int]:
        # Compact, and in the caller's key order: the same object always gives the same digest.
        data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        return self.add_blob_bytes(data, hold)

    def hold(self) -> "Hold":
        """For a writer that gathers blobs for a manifest it writes last (a create): the blobs it found or
        wrote through the hold are kept from removal (a delete, an overwrite) until the hold ends."""
        return Hold(self)

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

    def write_manifest(self, name: ModelName, manifest: Manifest) -> Manifest | None:
        """Writes `name`'s manifest; returns the one it replaced (None for a new name), whose layers the
        caller may remove with `remove_unused` (as Ollama does on create and pull)."""
        name = _checked(name)
        # All under the lock: a delete's pruning of empty directories cannot remove the directory between
        # its making and the write, and the blobs checked are still there when the manifest names them.
        with self._references:
            # Reuse directories (and a manifest) that exist under another case, as Ollama does, so
            # that names differing only in case never coexist.
            directory = self.manifests_dir
            for part in name.parts[:-1]:
                directory = self._child_ignoring_case(directory, part) or directory / part
            directory.mkdir(parents=True, exist_ok=True)
            final = self._child_ignoring_case(directory, name.tag) or directory / name.tag
            missing = [d for d in sorted(manifest.digests()) if not self.has_blob(d)]
            if missing:
                raise StoreError(f"blob {missing[0]} is missing (removed while {name.display} was being written);"
                                 " try again")
            try:
                replaced = Manifest.from_bytes(final.read_bytes()) if final.is_file() else None
            except (OSError, ValueError):
                replaced = None  # unreadable: its blobs are left to the startup prune
            self._write_file(directory, final, manifest.to_bytes())
        return replaced

    def copy(self, source: ModelName, destination: ModelName) -> Manifest | None | bool:
        """`destination` as a copy of `source`'s manifest: False when there is no `source`, else the
        manifest it replaced (see `write_manifest`). One step under the lock, so that a concurrent delete
        of `source` either comes first (False) or finds the copy referencing the blobs."""
        with self._references:
            found = self.find(source)
            if found is None:
                return False
            return self.write_manifest(destination, found.manifest)

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
        """Removes `name` and the blobs no other manifest (nor a writer's hold) uses; False when there
        is no such model, also when a concurrent delete removed it first."""
        with self._references:
            stored = self.find(name)
            if stored is None:
                return False
            try:
                stored.path.unlink()
            except FileNotFoundError:
                return False  # another process sharing the store deleted it
            self._prune_empty_dirs(stored.path.parent)
            self.remove_unused(stored.manifest.digests(), f"of {name.display}")
        return True

    def remove_unused(self, digests: set[str], what: str = "") -> list[str]:
        """Removes those of `digests` that no manifest references and no writer holds; the removed."""
        removed = []
        with self._references:
            try:
                still_used = self.referenced_digests(strict=True)
            except StoreError as exc:
                # Unknown references: keeping blobs wastes disk, deleting them could break a model.
                log.warning("not removing blobs %s: %s", what, exc)
                return []
            unused = set(digests) - still_used
            self._spared |= unused & self._held.keys()
            for digest in sorted(unused - self._held.keys()):
                unlink_quietly(self.blob_path(digest))
                removed.append(digest)
        return removed

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
                if "sha256:" + name[7:] in used or "sha256:" + name[7:] in self._held:
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


class Hold:
    """A create's view of the store: every blob it finds (`find`, `has_blob`) or writes through it is held,
    so that no delete or overwrite removes it before the create's manifest references it. The rest of the
    store's interface passes through. Use as a context manager: leaving it releases the holds."""

    def __init__(self, store: Store):
        self.store = store
        self.digests: set[str] = set()

    def __getattr__(self, name):
        return getattr(self.store, name)

    def add(self, digest: str) -> None:
        with self.store._references:
            if digest not in self.digests:
                self.digests.add(digest)
                self.store._held[digest] = self.store._held.get(digest, 0) + 1

    def has_blob(self, digest: str) -> bool:
        """Whether the blob is there, held from now on when it is."""
        with self.store._references:
            if not self.store.has_blob(digest):
                return False
            self.add(digest)
            return True

    def find(self, name: ModelName) -> StoredModel | None:
        with self.store._references:
            found = self.store.find(name)
            for digest in found.manifest.digests() if found else ():
                self.add(digest)
            return found

    def blob_writer(self) -> BlobWriter:
        return self.store.blob_writer(self)

    def add_blob_file(self, path: Path | str) -> tuple[str, int]:
        return self.store.add_blob_file(path, self)

    def add_blob_bytes(self, data: bytes) -> tuple[str, int]:
        return self.store.add_blob_bytes(data, self)

    def add_json_blob(self, obj) -> tuple[str, int]:
        return self.store.add_json_blob(obj, self)

    def release(self) -> None:
        """Ends the holds; a blob that a removal spared for this hold alone goes now if nothing uses it
        (the create failed, or did not reference it in the end)."""
        store = self.store
        with store._references:
            freed = set()
            for digest in self.digests:
                left = store._held.get(digest, 1) - 1
                if left > 0:
                    store._held[digest] = left
                else:
                    store._held.pop(digest, None)
                    freed.add(digest)
            self.digests = set()
            spared, store._spared = freed & store._spared, store._spared - freed
            if spared:
                store.remove_unused(spared, "spared for a create")

    def __enter__(self) -> "Hold":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _checked(name: ModelName) -> ModelName:
    # A ModelName built directly (not parsed) could hold "..": revalidate before making a path.
    return ModelName.from_parts(*name.parts)


def _writer_is_gone(path: Path) -> bool:
    """Whether the process named in a temp file's name (see `temp_name`) no longer exists. False for
    older names without a pid, for this process, and for any pid that lives (it may be a writer of another
    daemon sharing the store, or a pid reused: the lock and the age decide then)."""
    pid = path.name[len(TEMP_PREFIX):].split("-", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid() or int(pid) <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, another user's
        return False
    return False


def _remove_if_abandoned(path: Path) -> bool:
    try:
        young = time.time() - path.stat().st_mtime < _TEMP_GRACE_S
        if (young and not _writer_is_gone(path)) or not path.is_file():
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
