#!/usr/bin/env bash
# Installs lm: a virtual environment with llama-cpp-python (CUDA when a GPU and nvcc are present,
# Metal on macOS, CPU otherwise), the `lm` command on the PATH, and the bundled default model.
#
#   ./install.sh            install, then put smollm2:135m (and gemma3:270m) into the model store
#   ./install.sh --test     also install the test dependencies (used by scripts/test.sh)
#   ./install.sh --no-models  skip the bundled models
#
# Environment: LM_VENV (default: <repo>/.venv), LM_BUILD=cpu|cuda|metal to force the llama.cpp build,
# LM_LLAMAFILE=on to keep llamafile's sgemm in the CPU build (faster F16/BF16/Q8_0 prompts, but those types'
# texts then depend on what they are batched with; docs/performance.md has the A/B),
# LM_BIN_DIR (where the `lm` link goes), LM_MODELS (the model store).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${LM_VENV:-$repo/.venv}"
llama_version="0.3.36"
with_test=0
with_models=1
for arg in "$@"; do
  case "$arg" in
    --test) with_test=1 ;;
    --no-models) with_models=0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

python="${PYTHON:-$(command -v python3 || true)}"
[ -n "$python" ] || { echo "install.sh: python3 is required" >&2; exit 1; }
"$python" - <<'EOF' || { echo "install.sh: Python 3.10 or newer is required" >&2; exit 1; }
import sys; sys.exit(sys.version_info < (3, 10))
EOF

if [ ! -x "$venv/bin/python" ]; then
  echo ">>> creating virtual environment in $venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
pip=("$venv/bin/python" -m pip install -q)

# Which llama.cpp build: CUDA needs both the compiler and a GPU (nvcc alone is common on build hosts).
build="${LM_BUILD:-}"
if [ -z "$build" ]; then
  if [ "$(uname -s)" = "Darwin" ]; then build=metal
  elif command -v nvcc >/dev/null && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then build=cuda
  else build=cpu; fi
fi
# The CPU build leaves out llama.cpp's AMX kernels: on AMX hosts (Sapphire Rapids and later) they
# crash in ggml_backend_amx_mul_mat on the first prompt, on some machines (llama.cpp issue #20824,
# unfixed upstream); the AVX-512 kernels serve those CPUs instead. The flags only mean something on x86.
# Every build also leaves out llamafile's sgemm (a CPU kernel, for layers kept on the CPU): it serves
# unquantized (F32/F16/BF16) products of two or more rows and ggml's vec_dot one row, so a sequence's
# logits would depend on what it was batched with;
# without it, LM_BATCH_INVARIANT holds for every weight type. It costs those types' prefill (F16 about half,
# Q8_0 a third: docs/performance.md), so LM_LLAMAFILE=on keeps it.
llamafile="${LM_LLAMAFILE:-off}"
case "$llamafile" in on|off) ;; *) echo "install.sh: LM_LLAMAFILE must be on or off" >&2; exit 2 ;; esac
no_amx=""
if [ "$build" = cpu ] && [ "$(uname -m)" = x86_64 ]; then no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"; fi
llama_wanted() {  # true when llama-cpp-python is to be installed: not our version, a build without ggml's
  # RPC backend (`lm worker` and LM_RPC_WORKERS need libggml-rpc), or AMX or llamafile kernels where this
  # build leaves them out (an install from before these rules, or a wheel from pip's cache)
  local have
  have=$("$venv/bin/python" - 2>/dev/null <<'PY' || true
import glob, os, llama_cpp as l
flags = [l.__version__]
if not glob.glob(os.path.join(os.path.dirname(l.__file__), "lib", "*ggml-rpc*")): flags.append("norpc")
info = l.llama_print_system_info()
if b"AMX_INT8 = 1" in info: flags.append("amx")
if b"LLAMAFILE = 1" in info: flags.append("llamafile")
print(" ".join(flags))
PY
)
  case "$have " in "$llama_version "*) ;; *) return 0 ;; esac
  case " $have " in *" norpc "*) return 0 ;; esac
  if [ -n "$no_amx" ]; then case " $have " in *" amx "*) return 0 ;; esac; fi
  case " $have " in *" llamafile "*) [ "$llamafile" = on ] || return 0 ;; *) [ "$llamafile" = off ] || return 0 ;; esac
  return 1
}
if llama_wanted; then
  echo ">>> installing llama-cpp-python $llama_version ($build build; compiling takes a few minutes the first time)"
  case "$build" in
    cuda)  CMAKE_ARGS="-DGGML_CUDA=on -DGGML_RPC=on -DGGML_LLAMAFILE=$llamafile" "${pip[@]}" --force-reinstall --no-cache-dir "llama-cpp-python==$llama_version" ;;
    metal) CMAKE_ARGS="-DGGML_METAL=on -DGGML_RPC=on -DGGML_LLAMAFILE=$llamafile" "${pip[@]}" --force-reinstall "llama-cpp-python==$llama_version" ;;
    cpu)   cpu_env=(env CMAKE_ARGS="-DGGML_RPC=on -DGGML_LLAMAFILE=$llamafile" CFLAGS="${CFLAGS:-} $no_amx" CXXFLAGS="${CXXFLAGS:-} $no_amx")
           "${cpu_env[@]}" "${pip[@]}" "llama-cpp-python==$llama_version"
           if llama_wanted; then  # pip kept or reused a build without RPC, or with AMX or llamafile: build afresh
             "${cpu_env[@]}" "${pip[@]}" --force-reinstall --no-deps --no-cache-dir "llama-cpp-python==$llama_version"
           fi ;;
    *) echo "install.sh: LM_BUILD must be cpu, cuda or metal" >&2; exit 2 ;;
  esac
fi

echo ">>> installing lm"
if [ "$with_test" = 1 ]; then "${pip[@]}" -e "$repo[test]"; else "${pip[@]}" -e "$repo"; fi

# Put `lm` on the PATH: the first writable candidate that is already on it, else ~/.local/bin.
bin_dir="${LM_BIN_DIR:-}"
if [ -z "$bin_dir" ]; then
  for d in "$HOME/.local/bin" /usr/local/bin; do
    case ":$PATH:" in *":$d:"*) if [ -w "$d" ] || { [ ! -e "$d" ] && mkdir -p "$d" 2>/dev/null; }; then bin_dir="$d"; break; fi ;; esac
  done
  bin_dir="${bin_dir:-$HOME/.local/bin}"
fi
mkdir -p "$bin_dir"
ln -sf "$venv/bin/lm" "$bin_dir/lm"
echo ">>> lm is at $bin_dir/lm"
case ":$PATH:" in
  *":$bin_dir:"*) ;;
  *) echo ">>> $bin_dir is not on your PATH: add it, e.g. export PATH=\"$bin_dir:\$PATH\"" ;;
esac

if [ "$with_models" = 1 ]; then
  echo ">>> adding the bundled models to the store"
  "$venv/bin/python" -m runner.model.bundled_install
fi
echo ">>> done: try  lm run smollm2:135m \"Why is the sky blue?\""
