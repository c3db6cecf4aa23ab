#!/usr/bin/env bash
# Installs what secgroup needs on a Debian machine (as root) and the npm
# dependencies of this checkout. Idempotent. Usage: scripts/setup.sh [--tests]
# Node.js: the project runs on Node 24 LTS (Node 22 is supported). When the
# machine's node is older than 24 or missing, scripts/node24.sh installs the
# pinned, integrity-checked Node 24 (and npm) from the npm registry into
# /usr/local/lib/secgroup-node24 with links in /usr/local/bin (see that script;
# SECGROUP_NODE_PREFIX / SECGROUP_NODE_BIN move them).
#   --tests  also the packages the test suites need (python3, Docker engine, debootstrap,
#            systemd-analyze, python3-seccomp and shellcheck for the deployment tests,
#            postgresql: test/helpers/postgres.ts starts throwaway clusters from its binaries;
#            chromium for the console's browser tests)
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc, libc6-dev, linux-libc-dev: scripts/build-native.sh (the agent's secgroup-nftwatch)
# conntrack: the agent clears its flow mark bits with it (src/nft/conntrack.ts)
pkgs=(nftables conntrack iproute2 ca-certificates gcc libc6-dev linux-libc-dev)
if [[ ${1:-} == --tests ]]; then
  # the Docker engine is installed and started by docker/engine.sh (inert settings)
  pkgs+=(python3 net-tools debootstrap systemd iputils-ping python3-seccomp shellcheck postgresql chromium)
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
node_bin=$(scripts/node24.sh)
node_home=$(dirname "$(dirname "$(readlink -f "$node_bin")")")
PATH="$(dirname "$node_bin"):$PATH"
export PATH
echo "setup: node $(node --version) ($node_bin)"
# a native addon is compiled against the headers beside this node, never downloaded ones
if [[ -d $node_home/include/node ]]; then export npm_config_nodedir=$node_home; fi
# node_modules installed under another Node ABI (e.g. before the upgrade to 24) is installed again
abi=$(node -p process.versions.modules)
if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json || $(cat node_modules/.secgroup-node-abi 2>/dev/null) != "$abi" ]]; then
  echo "setup: npm ci (node ABI $abi)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$abi" >node_modules/.secgroup-node-abi
fi
