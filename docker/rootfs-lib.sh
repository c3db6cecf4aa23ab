# shellcheck shell=bash disable=SC2154 # here, suite, rootfs_recipe: set by the caller
# Sourced by systemd-image.sh and postgres-image.sh: a Debian minbase rootfs
# with extra packages, made by debootstrap from the mirror apt uses here, and
# packed into a tarball for `docker import`. The caller defines say and die,
# and sets here, suite and rootfs_recipe.

# image_inputs NAME EXTRA_FILES EXTRA_PKG...: the package list (base-packages.txt
# + EXTRA_PKG) and the hashes that name the images. Sets pkgs, pkgs_csv,
# rootfs_key (the package set), image_key (rootfs + the calling script, this
# library and EXTRA_FILES, a space-separated list of paths or "") and
# tag=secgroup-NAME:image_key. If that image exists already, tags it :latest,
# prints it and exits 0 (cached).
image_inputs() {
  local name=$1 extra_files=$2; shift 2
  mapfile -t pkgs < <({ sed -e 's/#.*//' -e 's/[[:space:]]//g' "$here/base-packages.txt"; printf '%s\n' "$@"; } | grep -v '^$' | sort -u)
  pkgs_csv="$(IFS=,; echo "${pkgs[*]}")"
  rootfs_key="$(printf '%s\n' "recipe=$rootfs_recipe" "suite=$suite" "${pkgs[@]}" | sha256sum | cut -c1-16)"
  # shellcheck disable=SC2086 # extra_files is a list of paths without spaces
  image_key="$({ echo "rootfs=$rootfs_key"; cat "$0" "$here/rootfs-lib.sh" $extra_files; } | sha256sum | cut -c1-16)"
  tag="secgroup-$name:$image_key"
  if docker image inspect "$tag" >/dev/null 2>&1; then
    docker tag "$tag" "secgroup-$name:latest"
    say "cached: $tag"
    echo "$tag"
    exit 0
  fi
}

# debootstrap_rootfs ROOTFS SUITE PKGS_CSV
debootstrap_rootfs() {
  local rootfs=$1 suite=$2 pkgs_csv=$3 mirror="${SECGROUP_DEBIAN_MIRROR:-}"
  if [[ -z $mirror ]]; then
    # the same lookup as base-image.sh (deb822 first, then one-line sources)
    mirror="$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)"
    [[ -n $mirror ]] || mirror="$(awk '$1 == "deb" && $0 ~ / '"$suite"' / { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list 2>/dev/null | head -n1)"
  fi
  [[ -n $mirror ]] || die "no $suite mirror found in /etc/apt/sources.list*; set SECGROUP_DEBIAN_MIRROR"
  command -v debootstrap >/dev/null || die "debootstrap missing (docker/base-image.sh installs it)"
  say "debootstrap --variant=minbase $suite with $pkgs_csv"
  debootstrap --variant=minbase --include="$pkgs_csv" "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 ||
    { tail -n 30 "$rootfs.log" >&2; die "debootstrap failed"; }
  # what an image does not need: package lists and caches, logs
  rm -rf "$rootfs/var/lib/apt/lists/"* "$rootfs/var/cache/apt/"*.bin "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/log/"*.log
}

# pack_rootfs ROOTFS TARBALL: /dev, /proc, /sys stay empty (the runtime mounts them)
pack_rootfs() {
  tar --numeric-owner --xattrs --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -C "$1" -cf "$2.part" .
  mv "$2.part" "$2"
}
