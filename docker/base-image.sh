#!/usr/bin/env bash
# Build the local base image for the system tests, without any registry:
#   debootstrap --variant=minbase bookworm (Debian mirror that apt uses here)
#   + docker/base-packages.txt + the host's Node.js 20 binary
#   -> docker import -> secgroup-base:<hash of inputs>, also tagged :latest
#
# Cached twice: the image tag is a hash of the inputs (this script, the package
# list, the node binary), so an existing tag is reused as is; and the
# debootstrap tarball is kept in $SECGROUP_CACHE_DIR keyed by suite + package
# list, so a new tag (new node, edited script) costs seconds, not a debootstrap.
#
# Prints the image tag on stdout (last line); progress and timings on stderr.
#
# Environment:
#   SECGROUP_CACHE_DIR      default /var/cache/secgroup-test (outside the repo,
#                           so a fresh clone in CI on the same machine reuses it)
#   SECGROUP_DEBIAN_MIRROR  default: the bookworm URI from /etc/apt/sources.list*
#   SECGROUP_NODE           node binary to copy (default: `command -v node`)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
suite=bookworm
cache="${SECGROUP_CACHE_DIR:-/var/cache/secgroup-test}"
pkg_file="$here/base-packages.txt"
# Bump when the debootstrap step below changes in a way that changes the tarball.
rootfs_recipe=1

say() { printf 'base-image.sh: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

docker info >/dev/null 2>&1 || die "no Docker engine answers; run docker/engine.sh first"

# ---- inputs -----------------------------------------------------------------
mapfile -t pkgs < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$pkg_file" | grep -v '^$' | sort -u)
((${#pkgs[@]} > 0)) || die "no packages in $pkg_file"
pkgs_csv="$(IFS=,; echo "${pkgs[*]}")"

node_bin="$(readlink -f "${SECGROUP_NODE:-$(command -v node || true)}")"
[[ -x $node_bin ]] || die "no node binary found (set SECGROUP_NODE)"
node_version="$("$node_bin" --version)"
[[ $node_version == v24.* ]] || die "$node_bin is $node_version; the images need Node.js 24 (scripts/setup.sh provides it)"
node_sha="$(sha256sum "$node_bin" | cut -d' ' -f1)"

sha() { sha256sum | cut -c1-16; }
rootfs_key="$(printf '%s\n' "recipe=$rootfs_recipe" "suite=$suite" "${pkgs[@]}" | sha)"
image_key="$(
  {
    printf '%s\n' "rootfs=$rootfs_key" "node=$node_sha"
    cat "${BASH_SOURCE[0]}" "$pkg_file"
  } | sha
)"
tag="secgroup-base:$image_key"

if docker image inspect "$tag" >/dev/null 2>&1; then
  docker tag "$tag" secgroup-base:latest
  say "cached: $tag (node $node_version)"
  echo "$tag"
  exit 0
fi

mirror_from_apt() {
  # deb822 (*.sources) first, then one-line format; the first bookworm entry wins.
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk -v suite="$suite" '
      BEGIN { RS = ""; FS = "\n" }
      {
        uri = ""; ok = 0; enabled = 1; deb = 0
        for (i = 1; i <= NF; i++) {
          line = $i
          if (line ~ /^#/) continue
          if (line ~ /^Types:/ && line ~ /(^|[ :])deb( |$)/) deb = 1
          if (line ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", line); split(line, u, /[ \t]+/); uri = u[1] }
          if (line ~ /^Suites:/) { n = split(line, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok = 1 }
          if (line ~ /^Enabled:[ \t]*no/) enabled = 0
        }
        if (deb && ok && enabled && uri != "") { print uri; exit }
      }' "$f"
  done
  { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } |
    awk -v suite="$suite" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i + 1) == suite) print $i }'
}

# ---- rootfs tarball (cached) ------------------------------------------------
mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9 # two concurrent builds would debootstrap twice into the same place
t_all="$(now)"
tarball="$cache/rootfs-$suite-$rootfs_key.tar"
if [[ -f $tarball ]]; then
  say "cached rootfs tarball: $tarball"
else
  mirror="${SECGROUP_DEBIAN_MIRROR:-$(mirror_from_apt | head -n1 || true)}"
  [[ -n $mirror ]] || die "no $suite mirror found in /etc/apt/sources.list*; set SECGROUP_DEBIAN_MIRROR"
  if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap; } >&2 ||
      die "apt-get install debootstrap failed"
  fi
  work="$(mktemp -d "$cache/debootstrap.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  say "debootstrap --variant=minbase $suite from $mirror with $pkgs_csv"
  t="$(now)"
  if ! debootstrap --variant=minbase --include="$pkgs_csv" "$suite" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    [[ -f $work/rootfs/debootstrap/debootstrap.log ]] && tail -n 30 "$work/rootfs/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
  fi
  say "debootstrap took $(took "$t")"
  # Trim what an image does not need: package lists and caches, logs.
  rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin \
    "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/log/"*.log
  t="$(now)"
  # /dev, /proc, /sys are mounted by the container runtime; keep the empty dirs.
  tar --numeric-owner --xattrs --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -C "$work/rootfs" -cf "$work/rootfs.tar" .
  mv "$work/rootfs.tar" "$tarball"
  rm -rf "$work"
  trap - EXIT
  say "rootfs tarball $(du -h "$tarball" | cut -f1) in $(took "$t"): $tarball"
fi

# ---- add node, import ---------------------------------------------------------
work="$(mktemp -d "$cache/image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
t="$(now)"
mkdir "$work/rootfs"
tar --numeric-owner --xattrs -C "$work/rootfs" -xpf "$tarball"
install -D -m 0755 "$node_bin" "$work/rootfs/usr/local/bin/node"
# The host is Debian 12 too, so node's shared libraries (libstdc++, libgcc_s,
# libc, libm, libdl, libpthread) come from the same packages in the rootfs.
# Check that each one resolves there, and that node starts in it.
while read -r lib; do
  found=""
  for d in lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu lib64 lib usr/lib; do
    if [[ -e $work/rootfs/$d/$lib ]]; then found=1; break; fi
  done
  [[ -n $found ]] || die "node needs $lib, which the rootfs lacks; add its package to $pkg_file"
done < <(ldd "$node_bin" | awk '$2 == "=>" { print $1 } $1 ~ /^\// { n = split($1, p, "/"); print p[n] }')
in_root="$(chroot "$work/rootfs" /usr/local/bin/node -e 'console.log(process.version)')" ||
  die "node does not start inside the rootfs"
[[ $in_root == "$node_version" ]] || die "node in rootfs reports $in_root, expected $node_version"
say "rootfs + node $node_version prepared in $(took "$t")"

t="$(now)"
tar --numeric-owner --xattrs -C "$work/rootfs" -c . |
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL org.secgroup.base.inputs=$image_key org.secgroup.base.node=$node_version" \
    --message "debootstrap minbase $suite + $pkgs_csv + node $node_version" \
    - "$tag" >/dev/null
say "docker import took $(took "$t")"
rm -rf "$work"
trap - EXIT

got="$(docker run --rm --network none "$tag" sh -c 'node --version && nft --version >/dev/null && ip -V >/dev/null && echo ok' | tr '\n' ' ')"
[[ $got == "$node_version ok " ]] || { docker rmi "$tag" >/dev/null 2>&1 || true; die "image self-check failed: $got"; }
docker tag "$tag" secgroup-base:latest
say "built $tag ($(docker image inspect "$tag" --format '{{.Size}}' | awk '{ printf "%d MB", $1 / 1e6 }')) in $(took "$t_all")"
echo "$tag"
