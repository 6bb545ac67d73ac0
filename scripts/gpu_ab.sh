#!/usr/bin/env bash
# A/B on the GPU machine: lm variants (code trees) one after another on the same GGUF and load, lm alone.
# Prepare .device as scripts/gpu_bench.sh says, and put the baseline's tree beside it, e.g.
#   mkdir -p .device/base && git archive HEAD runner registry modelfiles | tar x -C .device/base
# then run there:  VARIANTS="base:.device/base new:. new2048:.:2048" bash scripts/gpu_ab.sh
#   VARIANTS="name:dir[:num_batch[:ENV=VALUE,...]] ..."  e.g. "base:.device/base onectx:.::LM_PIPELINE=false"  CLIENTS=8,32,64  SHAPE=llama3-8b  PROMPT=277 (tokens)
#   LM_ENGINE_PROFILE=N LM_DEBUG=1  BENCH_ARGS="--shared-prefix-tokens 4096" (more lm bench options)
set -uo pipefail
ROOT=$PWD; OUT=${OUT:-/tmp/ab}; mkdir -p "$OUT"
SHAPE=${SHAPE:-llama3-8b}; CLIENTS=${CLIENTS:-8,32,64}; SLOTS=${SLOTS:-64}; TOKENS=${TOKENS:-256}
PROMPT=${PROMPT:-277}; CTX=${CTX:-2048}; REQS=${REQS:-2}
bash .device/device-build.sh >/dev/null || exit 1
export LD_LIBRARY_PATH=/tmp/lb/bin LLAMA_CPP_LIB_PATH=/tmp/lb/bin
model=/tmp/$SHAPE.gguf
[ -f "$model" ] || PYTHONPATH=$ROOT/.device/py python3 .device/synth_gguf.py "$model" --shape "$SHAPE" >/dev/null
python3 --version; PYTHONPATH=$ROOT/.device/py:$ROOT python3 -c "import runner.server.app, runner.cli.bench_load" || exit 1
for v in $VARIANTS; do
  IFS=: read -r name dir nb envs <<<"$v"
  rm -rf /tmp/lm-store
  (cd "$ROOT/$dir" && export PYTHONPATH=$ROOT/.device/py:$ROOT/$dir LM_MODELS=/tmp/lm-store LM_HOST=127.0.0.1:11500 \
     LM_NUM_PARALLEL=$SLOTS LM_CONTEXT_LENGTH=$CTX LM_NO_AUTOSTART=1 LM_DEBUG=${LM_DEBUG:-0}
   env ${envs//,/ } python3 -m runner.cli serve > "$OUT/serve-$name.log" 2>&1 & pid=$!
   for i in $(seq 1 60); do kill -0 $pid 2>/dev/null || break; curl -sf http://127.0.0.1:11500/ >/dev/null && break; sleep 1; done
   { printf 'FROM %s\n' "$model"; [ -n "$nb" ] && printf 'PARAMETER num_batch %s\n' "$nb"; } > /tmp/Modelfile
   python3 -m runner.cli create synth -f /tmp/Modelfile >/dev/null || tail -20 "$OUT/serve-$name.log"
   echo "== $name"
   # The load comes from this tree's client for every variant, so each gets the very same prompts.
   (cd "$ROOT" && PYTHONPATH=$ROOT/.device/py:$ROOT python3 -m runner.cli bench synth --clients "$CLIENTS" \
      --tokens "$TOKENS" --requests "$REQS" --prompt-tokens "$PROMPT" ${BENCH_ARGS:-} 2>&1 | grep -v "^\s*$" | tail -8)
   kill $pid; wait $pid) | tee -a "$OUT/ab.txt"
done
