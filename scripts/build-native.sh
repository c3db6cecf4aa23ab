#!/usr/bin/env bash
# Builds the agent's native parts into dist/, or into the directory given as $1:
#   - native/secgroup-nftwatch.c (the listener of nftables change events, see
#     its header) -> secgroup-nftwatch; libc only; needs gcc, libc6-dev and
#     linux-libc-dev (scripts/setup.sh installs them);
#   - native/secgroup-ctmark.c (clears the flow mark's bits in the conntrack
#     table over ctnetlink, see its header) -> secgroup-ctmark; libc only,
#     like the listener;
#   - native/secgroup-nftload.c (sends the nf_tables netlink batch the agent
#     encoded, in one piece, and reports the kernel's errors, see its header)
#     -> secgroup-nftload; libc only, like the listener;
#   - native/secgroup-memtrim.c (gives the agent's free C heap back, see its
#     header) -> secgroup-memtrim.node, a Node-API addon; needs gcc and the
#     node_api.h of a Node.js install (include/node next to the node on PATH,
#     or NODE_INCLUDE=DIR). Without them it says so and builds the rest: the
#     agent runs without it.
# Each one is skipped when it is newer than its source and this script.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$repo/dist}"
mkdir -p "$out"
fresh() { [[ -f $1 && $1 -nt $2 && $1 -nt ${BASH_SOURCE[0]} ]]; }

for name in secgroup-nftwatch secgroup-ctmark secgroup-nftload; do
  src="$repo/native/$name.c"
  bin="$out/$name"
  if ! fresh "$bin" "$src"; then
    # the warnings as errors; Debian's hardening flags (lintian checks the packaged binary)
    ${CC:-gcc} -O2 -Wall -Wextra -Werror -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE -pie -Wl,-z,relro,-z,now -o "$bin.tmp" "$src"
    mv -f "$bin.tmp" "$bin"
  fi
done

src="$repo/native/secgroup-memtrim.c"
addon="$out/secgroup-memtrim.node"
if ! fresh "$addon" "$src"; then
  node_bin="$(command -v node || true)"
  inc="${NODE_INCLUDE:-${node_bin:+$(dirname "$(dirname "$(readlink -f "$node_bin")")")/include/node}}"
  if [[ -z $inc || ! -f $inc/node_api.h ]]; then
    echo "build-native.sh: no node_api.h (${inc:-no node on PATH}; NODE_INCLUDE=DIR names one): secgroup-memtrim.node not built, the agent runs without it" >&2
  else
    # its napi_* symbols resolve against the node (or the single executable) that loads it
    ${CC:-gcc} -O2 -Wall -Wextra -Werror -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIC -shared -Wl,-z,relro,-z,now -I"$inc" -o "$addon.tmp" "$src"
    mv -f "$addon.tmp" "$addon"
  fi
fi
