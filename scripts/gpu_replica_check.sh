#!/usr/bin/env bash
# On the GPU machine: one GPU, LM_REPLICAS=auto: the daemon loads one copy, on the GPU (issue 27's one-GPU
# check; with two GPUs it should show two replicas, issue 28). Prepare here as scripts/gpu_bench.sh says,
# carry .device, run `bash scripts/gpu_replica_check.sh`; output in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/lm-replica}; mkdir -p "$OUT"
bash .device/device-build.sh > $OUT/build.log 2>&1 || { tail -20 $OUT/build.log; exit 1; }
export LD_LIBRARY_PATH=/tmp/lb/bin LLAMA_CPP_LIB_PATH=/tmp/lb/bin PYTHONPATH=$PWD/.device/py:$PWD
python3 .device/synth_gguf.py /tmp/s.gguf --shape small-0.5b >/dev/null
export LM_MODELS=/tmp/lm-store LM_HOST=127.0.0.1:11500 LM_NO_AUTOSTART=1 LM_REPLICAS=auto
python3 -c "from runner.daemon.placement import gpu_backend, gpu_devices; print('backend', gpu_backend(), gpu_devices())"
python3 -m runner.cli serve > $OUT/serve.log 2>&1 &
for i in $(seq 60); do curl -sf http://127.0.0.1:11500/api/version >/dev/null && break; sleep 1; done
printf 'FROM /tmp/s.gguf\n' > /tmp/Modelfile
python3 -m runner.cli create synth -f /tmp/Modelfile >/dev/null || tail -20 $OUT/serve.log
curl -s http://127.0.0.1:11500/api/generate -d '{"model":"synth","prompt":"hi","stream":false,"options":{"num_predict":16,"draft_type":"ngram"},"logprobs":true}' | python3 -c "import json,sys; b=json.load(sys.stdin); print({k: b.get(k) for k in ('eval_count','done_reason','draft_count','error')}, len(b.get('logprobs') or []))"
curl -s http://127.0.0.1:11500/api/ps | python3 -c "import json,sys; m=json.load(sys.stdin)['models'][0]; print({k: m.get(k) for k in ('size_vram','processor','gpus','replicas','kv_cache')})"
python3 -m runner.cli ps
grep -i "loading\|error" $OUT/serve.log | head -5
