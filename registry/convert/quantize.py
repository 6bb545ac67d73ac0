"""Quantizing a GGUF with llama.cpp's quantizer (`llama_model_quantize`), in a child process.

llama.cpp aborts the whole process on some bad inputs, so the caller (the daemon) never loads it for
this: `quantize_file` runs `python -m registry.convert.quantize SRC DST TYPE` and reports its last
error line. The child writes DST (the caller's temp file) and removes it when it fails or when its
parent dies mid-way, so no half-written file outlives a quantization.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Ollama's names (case-insensitive) -> llama_ftype
QUANT_TYPES = {
    "F32": 0, "F16": 1, "BF16": 32, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q8_0": 7,
    "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15,
    "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30,
}
# Short names llama-quantize accepts too, for the medium variant
_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
# Source file types that can be quantized (as Ollama: only unquantized models)
QUANTIZABLE_SOURCES = ("F32", "F16", "BF16")


class QuantizeError(RuntimeError):
    pass


def quantize_type(name: str) -> str:
    """The canonical name of a quantization type; ValueError (Ollama's message) for an unknown one."""
    canon = name.strip().upper()
    canon = _ALIASES.get(canon, canon)
    if canon not in QUANT_TYPES:
        raise ValueError(f"unsupported quantization type {name}")
    return canon


def quantize_file(src: Path, dst: Path, qtype: str, *, threads: int = 0, timeout: float | None = None) -> None:
    cmd = [sys.executable, "-m", "registry.convert.quantize", str(src), str(dst), quantize_type(qtype),
           str(threads or os.cpu_count() or 1)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                       os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not dst.is_file():
        lines = [line.strip() for line in (proc.stderr or "").splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower() or "failed" in line.lower()]
        detail = (errors or lines or [f"exit code {proc.returncode}"])[-1]
        raise QuantizeError(f"quantization to {qtype} failed: {detail}")


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _exit_with_parent(dst: str) -> None:
    """A quantization outliving the daemon (killed mid-way) would write a file nobody takes: stop, remove it."""
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        _remove(dst)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _main(argv: list[str]) -> int:
    src, dst, qtype, threads = argv[0], argv[1], argv[2], int(argv[3]) if len(argv) > 3 else 0
    _exit_with_parent(dst)
    import llama_cpp as ll

    ll.llama_backend_init()
    params = ll.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[qtype]
    params.nthread = threads
    rc = ll.llama_model_quantize(src.encode(), dst.encode(), params)
    if rc != 0:
        _remove(dst)
        print(f"error: llama_model_quantize returned {rc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
