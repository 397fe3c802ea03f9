#!/usr/bin/env bash
# Ray head + the Serve application "embedding": the command of the docker-compose service
# `ray-head` (tests/test_deploy_stack.py runs this same script on loopback, without Docker).
#
#   1. `ray start --head --block` (GCS, raylet, dashboard, metrics export), in the background;
#   2. `serve deploy $ALIGN_SERVE_CONFIG` through the dashboard's REST API, the same call
#      KubeRay's RayService makes, retried until the dashboard answers;
#   3. wait for Ray; SIGTERM/SIGINT shut Serve down gracefully (replicas drain), then Ray.
#
# Environment (all optional):
#   ALIGN_SERVE_CONFIG        the Serve config (default deploy/serve_config.yaml, the one file)
#   RAY_GCS_PORT              GCS port (default 6380)
#   RAY_DASHBOARD_HOST/PORT   dashboard and REST API (default 0.0.0.0:8265)
#   RAY_METRICS_EXPORT_PORT   Prometheus metrics of Ray and Serve (default 8080)
#   RAY_NUM_CPUS/RAY_NUM_GPUS resources of this node (default: detected)
#   RAY_START_ARGS            extra `ray start` flags, split on spaces
# It never runs `ray stop` (that would stop every Ray of the user on the machine).
set -uo pipefail
set -m  # background jobs get their own process group: Ray is stopped as one group

config="${ALIGN_SERVE_CONFIG:-deploy/serve_config.yaml}"
dashboard_port="${RAY_DASHBOARD_PORT:-8265}"
dashboard="http://127.0.0.1:${dashboard_port}"

if [ ! -f "$config" ]; then
  echo "ray-head: Serve config $config does not exist (ALIGN_SERVE_CONFIG)" >&2
  exit 2
fi

args=(
  --head --block --disable-usage-stats
  --port="${RAY_GCS_PORT:-6380}"
  --dashboard-host="${RAY_DASHBOARD_HOST:-0.0.0.0}"
  --dashboard-port="$dashboard_port"
  --metrics-export-port="${RAY_METRICS_EXPORT_PORT:-8080}"
)
if [ -n "${RAY_NUM_CPUS:-}" ]; then args+=(--num-cpus="$RAY_NUM_CPUS"); fi
if [ -n "${RAY_NUM_GPUS:-}" ]; then args+=(--num-gpus="$RAY_NUM_GPUS"); fi
# shellcheck disable=SC2206  # word splitting is the point
if [ -n "${RAY_START_ARGS:-}" ]; then args+=(${RAY_START_ARGS}); fi

ray start "${args[@]}" &
ray_pid=$!

stopping=0
shutdown() {
  stopping=1
  echo "ray-head: stopping Serve (replicas drain), then Ray" >&2
  timeout 60 serve shutdown --yes --address "$dashboard" || true
  kill -TERM "$ray_pid" 2>/dev/null || true  # ray start drains the node, then stops it
}
trap shutdown TERM INT

deployed=0
for _ in $(seq 1 90); do
  if ! kill -0 "$ray_pid" 2>/dev/null; then
    echo "ray-head: ray start exited before Serve was deployed" >&2
    exit 1
  fi
  if serve deploy --address "$dashboard" "$config"; then
    deployed=1
    break
  fi
  [ "$stopping" = 1 ] && break
  sleep 2
done
if [ "$deployed" != 1 ] && [ "$stopping" != 1 ]; then
  echo "ray-head: could not deploy $config through $dashboard" >&2
  kill -TERM "$ray_pid" 2>/dev/null || true
  wait "$ray_pid"
  kill -KILL -- "-$ray_pid" 2>/dev/null || true
  exit 1
fi
echo "ray-head: deployed $config; waiting for Ray (pid $ray_pid)" >&2

# `wait` returns early when a trapped signal arrives; wait again until Ray has exited.
while kill -0 "$ray_pid" 2>/dev/null; do
  wait "$ray_pid"
done
kill -KILL -- "-$ray_pid" 2>/dev/null || true  # leftovers of Ray's process group
[ "$stopping" = 1 ] && exit 0
echo "ray-head: Ray exited" >&2
exit 1
