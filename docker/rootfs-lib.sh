# Sourced by systemd-image.sh and postgres-image.sh: a Debian minbase rootfs
# with extra packages, made by debootstrap from the mirror apt uses here, and
# packed into a tarball for `docker import`. The caller defines say and die.

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
