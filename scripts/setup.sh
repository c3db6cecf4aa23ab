#!/usr/bin/env bash
# Installs what secgroup needs on a Debian machine (as root) and the npm
# dependencies of this checkout. Idempotent. Usage: scripts/setup.sh [--tests]
#   --tests  also the packages the test suites need (python3, Docker engine, debootstrap,
#            systemd-analyze, python3-seccomp and shellcheck for the deployment tests)
set -euo pipefail
cd "$(dirname "$0")/.."

need_node() {
  if ! command -v node >/dev/null 2>&1; then
    echo "setup: Node.js >= 20 is required (node not found)" >&2
    exit 1
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  if ((major < 20)); then
    echo "setup: Node.js >= 20 is required (found $(node --version))" >&2
    exit 1
  fi
}

pkgs=(nftables iproute2 ca-certificates)
if [[ ${1:-} == --tests ]]; then
  # the Docker engine is installed and started by docker/engine.sh (inert settings)
  pkgs+=(python3 net-tools debootstrap systemd iputils-ping python3-seccomp shellcheck)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
need_node
if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi
