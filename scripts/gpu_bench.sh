#!/usr/bin/env bash
# On the GPU machine (see ../shared/tools/README.md): lm and llama-server from the same llama.cpp build,
# the same synthetic GGUF, the same load, side by side. Prepare here with
#   bash ../shared/tools/device-prep.sh && cp ../shared/tools/{device-build.sh,synth_gguf.py} .device/
#   cp -r .venv/lib/python3*/site-packages/{platformdirs,prometheus_client} .device/py/
#   pip download orjson --python-version 3.12 --only-binary=:all: --platform manylinux_2_17_x86_64 --no-deps -d W
#   (cd .device/py && python3 -m zipfile -e W/orjson-*.whl .)     # the GPU machine runs Python 3.12
# then run this script there with .device carried. Results go to $OUT (or /tmp/lm-bench).
#   SHAPE=llama3-8b|small-0.5b  CLIENTS=1,8,32  SLOTS=32  TOKENS=128  PROMPT=128 (tokens)
#   PEER_FLAGS="--backend-sampling" (llama-server's best at 32 clients per ../shared/tools/README.md)
#   BATCHED=1 also runs llama-batched-bench (the same prompt length, 128 tokens generated per sequence)
set -uo pipefail
OUT=${OUT:-/tmp/lm-bench}; mkdir -p "$OUT"
SHAPE=${SHAPE:-llama3-8b}; CLIENTS=${CLIENTS:-1,8,32}; SLOTS=${SLOTS:-32}; TOKENS=${TOKENS:-128}
CTX=${CTX:-4096}; REQS=${REQS:-2}; PROMPT=${PROMPT:-128}; PEER_FLAGS=${PEER_FLAGS:-}
bash .device/device-build.sh >/dev/null || exit 1
export LD_LIBRARY_PATH=/tmp/lb/bin LLAMA_CPP_LIB_PATH=/tmp/lb/bin PYTHONPATH=$PWD/.device/py:$PWD
model=/tmp/$SHAPE.gguf
[ -f "$model" ] || python3 .device/synth_gguf.py "$model" --shape "$SHAPE" >/dev/null
export LM_MODELS=/tmp/lm-store LM_HOST=127.0.0.1:11500 LM_NUM_PARALLEL=$SLOTS LM_CONTEXT_LENGTH=$CTX LM_NO_AUTOSTART=1
python3 -m runner.cli serve > "$OUT/lm-serve.log" 2>&1 &
lm_pid=$!
/tmp/lb/bin/llama-server -m "$model" -ngl 99 -c $((CTX * SLOTS)) -np "$SLOTS" -kvu $PEER_FLAGS --port 8081 > "$OUT/llama-server.log" 2>&1 &
ls_pid=$!
for i in $(seq 1 120); do curl -sf http://127.0.0.1:8081/health >/dev/null && curl -sf http://127.0.0.1:11500/ >/dev/null && break; sleep 1; done
printf 'FROM %s\n' "$model" > /tmp/Modelfile
python3 -m runner.cli create synth -f /tmp/Modelfile > /dev/null || { tail -20 "$OUT/lm-serve.log"; exit 1; }
/tmp/lb/bin/llama-bench -m "$model" -ngl 99 -p 0 -n 128 -o json > "$OUT/llama-bench.json" 2>/dev/null || true
if [ -n "${BATCHED:-}" ]; then  # the kernels' own ceiling at these sequence counts (decode only, no sampling)
  /tmp/lb/bin/llama-batched-bench -m "$model" -ngl 99 -fa on -c 70000 -b 2048 -ub 512 -npp "$PROMPT" -ntg 128 \
    -npl "$CLIENTS" -kvu 2>/dev/null | grep "^|" > "$OUT/batched-bench.txt"
fi
python3 -m runner.cli bench synth --clients "$CLIENTS" --tokens "$TOKENS" --requests "$REQS" --prompt-tokens "$PROMPT" \
  --compare http://127.0.0.1:8081/completion | tee "$OUT/bench.txt"
python3 -m runner.cli ps | tee -a "$OUT/bench.txt"
kill $lm_pid $ls_pid; wait
