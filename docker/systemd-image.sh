#!/usr/bin/env bash
# Local image with a real systemd as PID 1, for the system tests that install
# and run the units as on a VM (test/system/systemd*.test.ts):
#   debootstrap --variant=minbase bookworm + systemd + docker/base-packages.txt
#   -> docker import -> secgroup-systemd:<hash of inputs>, also tagged :latest
# No Node.js in it: the agent runs as the single executable from the .deb.
#
# The rootfs tarball is cached in $SECGROUP_CACHE_DIR like base-image.sh's.
# Prints the image tag on stdout (last line); progress on stderr.
#
# Stop containers with SIGRTMIN+3 (docker stop -s; import cannot set STOPSIGNAL).
# Run containers of it with (see test/system/systemd-host.ts for why):
#   --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined
#   --security-opt apparmor=unconfined --tmpfs /run --tmpfs /run/lock
#   -v /sys/fs/cgroup:/sys/fs/cgroup:rw --cgroupns host (cgroup v1 host)
# The entry point makes / rshared first: with Docker's private propagation
# LoadCredential= leaves /run/credentials/<unit>/ empty.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
suite=bookworm
cache="${SECGROUP_CACHE_DIR:-/var/cache/secgroup-test}"
rootfs_recipe=1

say() { printf 'systemd-image.sh: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
# shellcheck source=docker/rootfs-lib.sh
source "$here/rootfs-lib.sh"

docker info >/dev/null 2>&1 || die "no Docker engine answers; run docker/engine.sh first"
image_inputs systemd "" systemd dbus

mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9
tarball="$cache/rootfs-systemd-$suite-$rootfs_key.tar"
if [[ ! -f $tarball ]]; then
  work="$(mktemp -d "$cache/debootstrap-systemd.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  debootstrap_rootfs "$work/rootfs" "$suite" "$pkgs_csv"
  r="$work/rootfs"
  # A container boots to multi-user.target without getty or udev
  ln -sf /dev/null "$r/etc/systemd/system/getty@tty1.service"
  ln -sf /dev/null "$r/etc/systemd/system/systemd-udevd.service"
  ln -sf /dev/null "$r/etc/systemd/system/systemd-udev-trigger.service"
  ln -sf /dev/null "$r/etc/systemd/system/systemd-networkd-wait-online.service"
  echo secgroup-vm >"$r/etc/hostname"
  : >"$r/etc/machine-id"
  cat >"$r/usr/local/sbin/boot" <<'BOOT'
#!/bin/sh
# Docker mounts / with private propagation; systemd's LoadCredential= needs shared
mount --make-rshared /
exec /lib/systemd/systemd "$@"
BOOT
  chmod 0755 "$r/usr/local/sbin/boot"
  pack_rootfs "$r" "$tarball"
  rm -rf "$work"
  trap - EXIT
fi

docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV container=docker' \
  --change 'ENTRYPOINT ["/usr/local/sbin/boot"]' \
  --change "LABEL org.secgroup.systemd.inputs=$image_key" \
  --message "debootstrap minbase $suite + $pkgs_csv" \
  "$tarball" "$tag" >/dev/null
docker tag "$tag" secgroup-systemd:latest
say "built $tag"
echo "$tag"
