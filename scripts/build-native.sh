#!/usr/bin/env bash
# Builds the agent's native helper: native/secgroup-nftwatch.c (the listener of
# nftables change events, see its header) into dist/secgroup-nftwatch, or into
# the directory given as $1. libc only; needs gcc, libc6-dev and
# linux-libc-dev (scripts/setup.sh installs them). Skipped (exit 0) when the
# output is newer than the source.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$repo/dist}"
src="$repo/native/secgroup-nftwatch.c"
bin="$out/secgroup-nftwatch"
mkdir -p "$out"
if [[ -x $bin && $bin -nt $src && $bin -nt ${BASH_SOURCE[0]} ]]; then exit 0; fi
# the warnings as errors; Debian's hardening flags (lintian checks the packaged binary)
${CC:-gcc} -O2 -Wall -Wextra -Werror -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE -pie -Wl,-z,relro,-z,now -o "$bin.tmp" "$src"
mv -f "$bin.tmp" "$bin"
