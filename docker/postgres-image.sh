#!/usr/bin/env bash
# Local PostgreSQL image for the system tests and docker/compose.yaml (the HA
# topology: one database, several controller replicas):
#   debootstrap --variant=minbase bookworm + docker/base-packages.txt
#   + Debian's `postgresql` -> docker import -> secgroup-postgres-rootfs:<hash>
#   + docker/postgres-entry.sh (classic builder) -> secgroup-postgres:<hash>, :latest
# Built like secgroup-systemd (docker/systemd-image.sh), not FROM secgroup-base:
# `docker build` has no network here (bridge: none), so the package cannot be
# installed in a build step; debootstrap resolves its dependencies instead. No
# Node.js in it.
#
# The rootfs tarball is cached in $SECGROUP_CACHE_DIR like base-image.sh's;
# the tag is a hash of the inputs (package list, this script, the entry point).
# debootstrap's postinst of postgresql-common creates a cluster `main` inside
# the rootfs (never started: no runlevel in a chroot); it is removed, the entry
# point initdb's its own into PGDATA on first start.
# Prints the image tag on stdout (last line); progress on stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
suite=bookworm
cache="${SECGROUP_CACHE_DIR:-/var/cache/secgroup-test}"
rootfs_recipe=1

say() { printf 'postgres-image.sh: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
# shellcheck source=docker/rootfs-lib.sh
source "$here/rootfs-lib.sh"
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

docker info >/dev/null 2>&1 || die "no Docker engine answers; run docker/engine.sh first"
image_inputs postgres "$here/postgres-entry.sh" postgresql

t_all="$(now)"
mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9
tarball="$cache/rootfs-postgres-$suite-$rootfs_key.tar"
if [[ ! -f $tarball ]]; then
  work="$(mktemp -d "$cache/debootstrap-postgres.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  t="$(now)"
  debootstrap_rootfs "$work/rootfs" "$suite" "$pkgs_csv"
  say "debootstrap took $(took "$t")"
  r="$work/rootfs"
  # the package's own cluster (created by its postinst, never started): the entry point makes one in PGDATA
  rm -rf "$r/etc/postgresql/"*/main "$r/var/lib/postgresql/"*/main
  pack_rootfs "$r" "$tarball"
  rm -rf "$work"
  trap - EXIT
  say "rootfs tarball $(du -h "$tarball" | cut -f1): $tarball"
fi

rootfs_tag="secgroup-postgres-rootfs:$rootfs_key"
docker image inspect "$rootfs_tag" >/dev/null 2>&1 ||
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --message "debootstrap minbase $suite + $pkgs_csv" \
    "$tarball" "$rootfs_tag" >/dev/null

ctx="$(mktemp -d /tmp/secgroup-postgres-ctx.XXXXXX)"
trap 'rm -rf "$ctx"' EXIT
install -m 0755 "$here/postgres-entry.sh" "$ctx/postgres-entry.sh"
cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $rootfs_tag
LABEL org.secgroup.role=postgres org.secgroup.postgres.inputs=$image_key
COPY postgres-entry.sh /usr/local/sbin/postgres-entry
ENV PGDATA=/var/lib/postgresql/data
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["/usr/local/sbin/postgres-entry"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build -q --pull=false -t "$tag" "$ctx" >/dev/null 2>"$ctx/build.log" ||
  { cat "$ctx/build.log" >&2; die "docker build of secgroup-postgres failed"; }
got="$(docker run --rm --network none --entrypoint sh "$tag" -c 'ls -d /usr/lib/postgresql/*/bin/postgres >/dev/null && id -u postgres >/dev/null && echo ok')"
[[ $got == ok ]] || { docker rmi "$tag" >/dev/null 2>&1 || true; die "image self-check failed: $got"; }
docker tag "$tag" secgroup-postgres:latest
say "built $tag in $(took "$t_all")"
echo "$tag"
