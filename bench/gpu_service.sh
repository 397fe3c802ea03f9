#!/usr/bin/env bash
# One-go GPU benchmark of the services, for a machine with an NVIDIA GPU.
#
#   bench/gpu_service.sh [OUT_DIR]        (default OUT_DIR: $OUT or ./bench-gpu-out)
#
# Runs, each step under a time limit, writing JSON + logs to OUT_DIR:
#   1. environment: nvidia-smi, torch/CUDA versions
#   2. bench/service.py on the GPU with the in-process embedder: cached re-score p50/p95,
#      8 concurrent clients, and embedding throughput in-process vs through the service
#      (timm/tf_efficientnet_lite0 on THINGS images, 1,853 real images)
#   3. the same through Ray Serve's gRPC proxy (embedder grpc://127.0.0.1:9000) when Ray
#      and deploy/serve_config.yaml are there: starts Ray with ALIGN_DEVICE=gpu (cpu
#      without CUDA), so the app builder gives the family replicas the config's `gpu`
#      resources preset; records where the TimmEmbedder replica runs (serve_replica.json,
#      fails the step unless "cuda" with CUDA), benchmarks, shuts Serve and Ray down
# Needs: a Python env with the project installed (.venv, or PYTHON=...), real data in
# ALIGN_DATA_DIR (default ../shared/data), redis-server on PATH (else runs without Redis).
# Nothing is downloaded: HF_HUB_OFFLINE=1.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT_DIR="${1:-${OUT:-$ROOT/bench-gpu-out}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
export ALIGN_DATA_DIR="${ALIGN_DATA_DIR:-$(cd "$ROOT/.." && pwd)/shared/data}"
STEP_LIMIT="${STEP_LIMIT:-240}"
MODEL="${MODEL:-timm/tf_efficientnet_lite0}"
DATASET="${DATASET:-things}"

log() { echo "[gpu_service] $*" | tee -a "$OUT_DIR/summary.txt"; }

log "root=$ROOT python=$PY data=$ALIGN_DATA_DIR out=$OUT_DIR"
{ nvidia-smi || echo "nvidia-smi not available"; } > "$OUT_DIR/nvidia-smi.txt" 2>&1
"$PY" - > "$OUT_DIR/env.json" 2>&1 <<'PYEOF'
import json, torch
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                  "available": torch.cuda.is_available(),
                  "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))
PYEOF
cat "$OUT_DIR/env.json" | tee -a "$OUT_DIR/summary.txt"
DEVICE=cuda
grep -q '"available": true' "$OUT_DIR/env.json" || { log "no CUDA: running on cpu"; DEVICE=cpu; }

REDIS_ARGS=()
if ! command -v redis-server >/dev/null; then
  log "redis-server not found: benchmarking without Redis (memory tier only)"
  REDIS_ARGS=(--redis off)
fi

log "step 2: in-process embedder on $DEVICE"
timeout "$STEP_LIMIT" "$PY" -m bench service --embedding --device "$DEVICE" \
  --model "$MODEL" --dataset "$DATASET" --repeats 200 --per-client 50 --workers 4 \
  "${REDIS_ARGS[@]}" --json "$OUT_DIR/service_local.json" \
  > "$OUT_DIR/service_local.log" 2>&1
log "step 2 exit $? ; table:"
grep -v '^{"ts' "$OUT_DIR/service_local.log" | tail -8 | tee -a "$OUT_DIR/summary.txt"

if "$PY" -c "import ray.serve" 2>/dev/null && [ -f deploy/serve_config.yaml ]; then
  SERVE_DEVICE=gpu
  [ "$DEVICE" = cuda ] || SERVE_DEVICE=cpu
  log "step 3: Ray Serve embedding app (gRPC proxy :9000), ALIGN_DEVICE=$SERVE_DEVICE"
  # Ray's workers (the app builder among them) inherit the env of `ray start`
  ALIGN_DEVICE="$SERVE_DEVICE" timeout 120 "$PY" -m ray.scripts.scripts start --head \
    --disable-usage-stats > "$OUT_DIR/ray_start.log" 2>&1
  timeout 180 "$PY" -m ray.serve.scripts deploy deploy/serve_config.yaml \
    > "$OUT_DIR/serve_deploy.log" 2>&1 || \
    timeout 180 serve deploy deploy/serve_config.yaml >> "$OUT_DIR/serve_deploy.log" 2>&1
  for _ in $(seq 1 60); do  # wait for the app to be RUNNING
    serve status 2>/dev/null | grep -q "status: RUNNING" && break
    sleep 2
  done
  serve status > "$OUT_DIR/serve_status.txt" 2>&1
  timeout 120 "$PY" - "$DEVICE" > "$OUT_DIR/serve_replica.json" 2> "$OUT_DIR/serve_replica.log" <<'PYEOF'
import json, sys
import ray
from ray import serve
ray.init(address="auto", logging_level="ERROR")
stats = serve.get_deployment_handle("TimmEmbedder", "embedding").stats.remote().result(
    timeout_s=90)
out = {"expected": sys.argv[1], "device": stats["device"], "actor": stats["actor_name"],
       "cluster_gpus": ray.cluster_resources().get("GPU", 0),
       "free_gpus": ray.available_resources().get("GPU", 0)}
print(json.dumps(out))
sys.exit(0 if out["device"] == sys.argv[1] else 1)
PYEOF
  rc=$?
  log "step 3 replica device check exit $rc (0: TimmEmbedder runs on $DEVICE):" \
    "$(cat "$OUT_DIR/serve_replica.json")"
  timeout "$STEP_LIMIT" "$PY" -m bench service --embedding --embedder grpc://127.0.0.1:9000 \
    --model "$MODEL" --dataset "$DATASET" --repeats 100 --per-client 20 --workers 4 \
    "${REDIS_ARGS[@]}" --json "$OUT_DIR/service_ray.json" > "$OUT_DIR/service_ray.log" 2>&1
  log "step 3 exit $? ; table:"
  grep -v '^{"ts' "$OUT_DIR/service_ray.log" | tail -8 | tee -a "$OUT_DIR/summary.txt"
  timeout 60 serve shutdown -y > /dev/null 2>&1
  timeout 60 "$PY" -m ray.scripts.scripts stop > /dev/null 2>&1
else
  log "step 3 skipped: ray[serve] or deploy/serve_config.yaml missing"
fi
log "done; results in $OUT_DIR"
