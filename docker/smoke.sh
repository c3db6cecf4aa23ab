#!/usr/bin/env bash
# End-to-end check of the container chain with a stand-in CLI (no real dist/
# needed): base image -> agent/controller images -> an --internal network in
# 198.19.0.0/16 + fd00:5ec::/48 -> two containers that talk TCP over IPv4 and
# IPv6 -> an nft table applied in one container that must not appear in the
# root namespace -> everything removed again (also on failure).
#
# Needs a running engine (docker/engine.sh). Exits non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
run="sgsmoke-$$"
net="$run-net"
subnet4="198.19.250.0/24"
subnet6="fd00:5ec:250::/64"

say() { printf 'smoke.sh: %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

tmp="$(mktemp -d /tmp/secgroup-smoke.XXXXXX)"
cleanup() {
  docker rm -f "$run-agent" "$run-peer" >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# Stand-in for dist/cli/main.js: `serve PORT` and `connect HOST PORT`.
mkdir -p "$tmp/dist/cli"
cat >"$tmp/dist/cli/main.js" <<'EOF'
import net from 'node:net';
import os from 'node:os';
const [cmd, a, b] = process.argv.slice(2);
if (cmd === 'serve') {
  net.createServer((c) => c.end(`hello from ${os.hostname()} to ${c.remoteAddress}\n`))
    .listen({ port: Number(a), host: '::', ipv6Only: false }, () => console.log('listening'));
} else if (cmd === 'connect') {
  const c = net.connect({ host: a, port: Number(b), timeout: 3000 });
  c.on('data', (d) => { process.stdout.write(d); process.exit(0); });
  c.on('timeout', () => { console.error('timeout'); process.exit(1); });
  c.on('error', (e) => { console.error(e.message); process.exit(1); });
} else {
  console.log(`stand-in secgroup CLI, node ${process.version}`);
}
EOF

root_before="$(nft list ruleset)"

SECGROUP_DIST_DIR="$tmp/dist" SECGROUP_IMAGE_TAG=smoke "$here/build-images.sh" >/dev/null

# inhibit_ipv4: the root namespace gets no IPv4 address on this bridge (see
# README); the bridge name carries the run prefix so a leftover can be found.
docker network create --internal \
  --subnet "$subnet4" --ipv6 --subnet "$subnet6" \
  -o com.docker.network.bridge.inhibit_ipv4=true \
  -o com.docker.network.bridge.name="$run" \
  --label org.secgroup.test="$run" "$net" >/dev/null

docker run -d --name "$run-agent" --network "$net" --cap-add NET_ADMIN \
  --label org.secgroup.test="$run" secgroup-agent:smoke serve 8080 >/dev/null
docker run -d --name "$run-peer" --network "$net" --cap-add NET_ADMIN \
  --label org.secgroup.test="$run" --entrypoint sleep secgroup-controller:smoke 300 >/dev/null

for _ in $(seq 1 50); do
  docker logs "$run-agent" 2>&1 | grep -q listening && break
  sleep 0.1
done

ip4="$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$run-agent")"
ip6="$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").GlobalIPv6Address}}" "$run-agent")"
say "agent at $ip4 and $ip6"
[[ $ip4 == 198.19.250.* && $ip6 == fd00:5ec:250:* ]] || die "unexpected addresses"

for target in "$ip4" "$ip6" "$run-agent"; do
  out="$(docker exec "$run-peer" node /opt/secgroup/dist/cli/main.js connect "$target" 8080)" ||
    die "TCP to $target failed"
  say "TCP $target: $out"
done

docker exec "$run-agent" nft add table inet secgroup
docker exec "$run-agent" nft list tables | grep -qx 'table inet secgroup' || die "table not in container"
nft list tables | grep -q secgroup && die "table inet secgroup appeared in the root namespace"
say "nft table applied in the container, root namespace untouched"

cleanup
trap - EXIT
[[ "$(nft list ruleset)" == "$root_before" ]] || die "root namespace ruleset changed"
ip link show "$run" >/dev/null 2>&1 && die "bridge $run left behind"
say "PASS"
