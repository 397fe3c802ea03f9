#!/usr/bin/env bash
# Base images without a container registry: Debian bookworm from the Debian mirror this
# machine's apt already uses (debootstrap), imported into the local Docker engine, and the
# two service images of the test stack built on it from Debian's packages.
#
#   sudo deploy/docker/build_base.sh                  # all three images
#   sudo deploy/docker/build_base.sh --only-base      # align-base:bookworm only
#
# Images (tags overridable with ALIGN_BASE_IMAGE / ALIGN_REDIS_IMAGE / ALIGN_PROMETHEUS_IMAGE):
#   align-base:bookworm          minbase + python3 (3.11), python3-venv, python-is-python3:
#                                the PYTHON_IMAGE of deploy/docker/Dockerfile offline
#   align-redis:bookworm         + redis-server (Debian 7.0), runs as `redis` in /data
#   align-prometheus:bookworm    + prometheus (Debian 2.42) and wget (its healthcheck)
# The Debian mirror is read from /etc/apt/sources.list*; ALIGN_DEBIAN_MIRROR overrides it.
# An existing base image is kept (ALIGN_REBUILD_BASE=1 rebuilds it); the two service
# images are always built (from Docker's layer cache when nothing changed). Needs root
# (debootstrap), debootstrap and a running Docker engine. Nothing leaves this machine but
# the apt downloads from that mirror.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
base="${ALIGN_BASE_IMAGE:-align-base:bookworm}"
redis="${ALIGN_REDIS_IMAGE:-align-redis:bookworm}"
prometheus="${ALIGN_PROMETHEUS_IMAGE:-align-prometheus:bookworm}"
suite=bookworm
only_base=0
[ "${1:-}" = "--only-base" ] && only_base=1

have_image() { [ "${ALIGN_REBUILD_BASE:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

# The first Debian (not -security) archive URI of this machine's apt sources.
detect_mirror() {
  local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
  local f
  for f in "${files[@]}"; do
    [ -f "$f" ] || continue
    # one-line format: deb [opts] URI suite ...; deb822: URIs: URI
    sed -nE -e 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]].*/\2/p' \
      -e 's/^URIs:[[:space:]]*([^[:space:]]+).*/\1/p' "$f"
  done | grep -E '/debian/?$' | grep -v -- '-security' | head -n 1
}

if ! have_image "$base"; then
  mirror="${ALIGN_DEBIAN_MIRROR:-$(detect_mirror || true)}"
  if [ -z "$mirror" ]; then
    echo "build_base: no Debian mirror in /etc/apt/sources.list*; set ALIGN_DEBIAN_MIRROR" >&2
    exit 2
  fi
  command -v debootstrap >/dev/null || { echo "build_base: debootstrap is not installed" >&2; exit 2; }
  root="$(mktemp -d /var/tmp/align-base.XXXXXX)"
  trap 'rm -rf "$root"' EXIT
  echo "build_base: debootstrap --variant=minbase $suite from $mirror"
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3 \
    "$suite" "$root" "$mirror" >"$root.log" 2>&1 || { tail -n 30 "$root.log" >&2; exit 1; }
  rm -f "$root.log"
  # apt inside builds on this base: the same mirror, updates and security suites
  security="${mirror%/debian}/debian-security"
  cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["bash"]' - "$base" >/dev/null
  echo "build_base: imported $base"
else
  echo "build_base: $base exists"
fi
[ "$only_base" = 1 ] && exit 0

build() {  # build TAG DOCKERFILE (always: Docker's layer cache makes a rebuild a no-op)
  local out
  out="$(mktemp)"
  if ! DOCKER_BUILDKIT=0 docker build --network host --build-arg "BASE_IMAGE=$base" \
      -f "$2" -t "$1" "$here/base" >"$out" 2>&1; then
    tail -n 30 "$out" >&2
    rm -f "$out"
    exit 1
  fi
  rm -f "$out"
  echo "build_base: $1 built"
}
build "$redis" "$here/base/redis.Dockerfile"
build "$prometheus" "$here/base/prometheus.Dockerfile"
