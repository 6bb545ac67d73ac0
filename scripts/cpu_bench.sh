#!/usr/bin/env bash
# This machine's CPU: lm beside llama-server (same GGUF, same llama.cpp source, 4 slots each), one run.
# Build the peer from llama-cpp-python's vendored llama.cpp first (staged by ../shared/tools/device-prep.sh),
# without AMX kernels as install.sh builds lm's (on x86):
#   CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" CXXFLAGS="$CFLAGS" cmake -S .device/llama.cpp -B /tmp/lbcpu -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DCMAKE_BUILD_TYPE=Release \
#     -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF && cmake --build /tmp/lbcpu -j2 --target llama-server llama-bench
#   MODEL=gemma3|smollm2  CLIENTS=1,4  TOKENS=64  PROMPT=64 (tokens)  REQS=4
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-gemma3}; CLIENTS=${CLIENTS:-1,4}; TOKENS=${TOKENS:-64}; PROMPT=${PROMPT:-64}; REQS=${REQS:-4}
LB=${LB:-/tmp/lbcpu/bin}; OUT=${OUT:-/tmp/cpu-bench}; mkdir -p "$OUT"
gguf=$(.venv/bin/python -c "from tests.models import ${MODEL}_gguf as f; print(f())") || exit 1
export LM_MODELS=$OUT/store LM_HOST=127.0.0.1:11600 LM_NUM_PARALLEL=4 LM_NO_AUTOSTART=1
.venv/bin/lm serve > "$OUT/lm-serve.log" 2>&1 & lm_pid=$!
"$LB/llama-server" -m "$gguf" -c 16384 -np 4 --port 8082 > "$OUT/llama-server.log" 2>&1 & ls_pid=$!
trap 'kill $lm_pid $ls_pid 2>/dev/null; wait' EXIT
for i in $(seq 1 60); do curl -sf http://127.0.0.1:8082/health >/dev/null && curl -sf http://$LM_HOST/ >/dev/null && break; sleep 1; done
printf 'FROM %s\n' "$gguf" > "$OUT/Modelfile"
.venv/bin/lm create "$MODEL" -f "$OUT/Modelfile" > /dev/null || exit 1
"$LB/llama-bench" -m "$gguf" -p 0 -n "$TOKENS" 2>/dev/null | grep "tg$TOKENS"
.venv/bin/lm bench "$MODEL" --clients "$CLIENTS" --tokens "$TOKENS" --prompt-tokens "$PROMPT" --requests "$REQS" \
  --compare http://127.0.0.1:8082/completion ${BENCH_FLAGS:-}
