#!/bin/sh
# Emulates, without systemd as PID 1, the parts of secgroup-agent.service's
# sandbox that decide whether nft, ss and Node work, then runs a command in it.
# Test helper for test/kernel/deploy-sandbox.test.ts; run as root inside
#   ip netns exec NS unshare --mount --propagation private -- sh sandbox.sh ...
# so that every mount below stays in that private mount namespace.
#
#   sandbox.sh APPDIR UID CAPS FAMILIES SYSCALLS -- COMMAND [ARG...]
#
# APPDIR    directory with the files the command needs, seccomp-exec.py among
#           them; seen read-only as /tmp/app
# UID       user and group id to run as (DynamicUser= picks one in 61184-65519)
# CAPS      comma-separated capability names for setpriv, e.g. net_admin, or "none"
#           (CapabilityBoundingSet= + AmbientCapabilities=)
# FAMILIES  socket families allowed (RestrictAddressFamilies=), e.g. AF_UNIX,AF_INET
# SYSCALLS  file in APPDIR with the allowed syscalls (SystemCallFilter=), or "-" for no
#           seccomp filter at all (control runs)
#
# Emulated: ProtectSystem=strict (every mount but /proc, /sys, /dev read-only),
# ProtectKernelTunables= (/proc/sys and /sys read-only), ProtectHome=yes (/root,
# /home, /run/user empty and inaccessible), PrivateTmp=yes (fresh /tmp and
# /var/tmp), RuntimeDirectory= (a tmpfs in $RUNTIME_DIRECTORY), UMask=0077, NoNewPrivileges=yes, the user, the capability sets,
# SystemCallFilter= with SystemCallErrorNumber=EPERM, RestrictAddressFamilies=
# and SystemCallArchitectures=native (seccomp-exec.py). Not emulated: see
# systemd/README.md, "What the sandbox test emulates".
set -eu
if [ $# -lt 7 ] || [ "$6" != -- ]; then
  echo "usage: sandbox.sh APPDIR UID CAPS FAMILIES SYSCALLS -- COMMAND..." >&2
  exit 2
fi
app=$1 uid=$2 caps=$3 families=$4 syscalls=$5
shift 6

# ProtectSystem=strict
findmnt -rno TARGET | while read -r m; do
  case $m in /proc | /proc/* | /sys | /sys/* | /dev | /dev/*) continue ;; esac
  # findmnt -r escapes blanks as \x20; such mount points are left as they are
  case $m in *'\x'*) echo "sandbox.sh: skipping mount point $m" >&2; continue ;; esac
  mount -o remount,bind,ro "$m"
done
# ProtectKernelTunables=yes
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
mount -o remount,bind,ro /sys
# ProtectHome=yes
for d in /root /home /run/user; do
  if [ -d "$d" ]; then mount -t tmpfs -o ro,mode=000,nosuid,nodev,noexec tmpfs "$d"; fi
done
# PrivateTmp=yes; the app directory (which may itself be under /tmp) is
# reached through the working directory before /tmp is covered, and bound in
# read-only as /tmp/app (mount --no-canonicalize: "." must not be turned back
# into a path, which would point into the new /tmp)
cd "$app"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /var/tmp
mkdir /tmp/app
mount --no-canonicalize --bind . /tmp/app
mount -o remount,bind,ro /tmp/app
# RuntimeDirectory=secgroup: a private tmpfs directory of the user, named by
# $RUNTIME_DIRECTORY (systemd's is /run/secgroup; /run is not ours to change here)
mkdir /tmp/runtime
mount -t tmpfs -o "mode=0700,uid=$uid,gid=$uid,nosuid,nodev" tmpfs /tmp/runtime
export RUNTIME_DIRECTORY=/tmp/runtime
cd /
umask 077

if [ "$caps" = none ]; then
  capset=-all
else
  capset=-all,$(printf '%s' "$caps" | sed 's/[^,]*/+&/g')
fi
if [ "$syscalls" = - ]; then
  exec setpriv --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs \
    --bounding-set="$capset" --inh-caps="$capset" --ambient-caps="$capset" -- "$@"
fi
exec setpriv --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs \
  --bounding-set="$capset" --inh-caps="$capset" --ambient-caps="$capset" -- \
  /usr/bin/python3 /tmp/app/seccomp-exec.py "/tmp/app/$syscalls" "$families" -- "$@"
