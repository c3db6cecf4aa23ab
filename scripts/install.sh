#!/usr/bin/env bash
# Installs the secgroup agent on a Debian/Ubuntu machine with systemd (as root).
#
#   scripts/install.sh [--now] [--bundle FILE] [--listener FILE] [--root DIR]
#   scripts/install.sh --uninstall [--purge] [--root DIR]
#
# Install (idempotent; run it again to upgrade the program):
#   - nftables, with apt-get, when `nft` is missing (and conntrack when
#     there is no secgroup-ctmark next to the bundle; see below)
#   - FILE (default: dist/secgroup.cjs of this checkout, `npm run bundle`)
#       -> /usr/local/lib/secgroup/secgroup.cjs (a FILE named *.mjs, an ES
#       module bundle of an older checkout, -> secgroup.mjs; the other one
#       of the two is removed), and the controller's part of the program,
#       secgroup-controller.cjs next to FILE (npm run bundle writes it),
#       -> /usr/local/lib/secgroup/secgroup-controller.cjs
#   - the drift monitor's listener (--listener FILE, default secgroup-nftwatch
#       next to the bundle: dist/ after `npm run build` or scripts/build-native.sh)
#       -> /usr/local/lib/secgroup/secgroup-nftwatch, where the agent looks for
#       it (drift_listener: auto); when there is none it says so, and the agent
#       follows `nft monitor` instead
#   - secgroup-ctmark next to the bundle (clears the flow mark's bits in the
#       conntrack table; scripts/build-native.sh)
#       -> /usr/local/lib/secgroup/secgroup-ctmark, where the agent looks for
#       it; when there is none it says so, installs the conntrack package
#       (apt-get, a warning when that fails) and the agent uses conntrack(8)
#   - secgroup-memtrim.node next to the bundle (the addon that gives the
#       agent's free C heap back after bursts; scripts/build-native.sh)
#       -> /usr/local/lib/secgroup/secgroup-memtrim.node, where the agent
#       looks for it; when there is none it says so, and the agent runs
#       without (its idle RSS a few MB higher)
#   - /usr/local/bin/secgroup: runs it with the Node.js >= 22.15 found now (24 LTS is what it is tested on)
#   - systemd/secgroup-agent.service -> /usr/local/lib/systemd/system/
#   - examples/config/agent.yaml -> /etc/secgroup/agent.yaml and an empty
#     /etc/secgroup/agent.token (0600), each only when missing: an existing
#     configuration or token is never overwritten
#   - when systemd is PID 1: daemon-reload, enable the unit, restart it if it
#     was running (an upgrade); --now also starts it. Without systemd as PID 1
#     it says so and leaves systemctl alone.
# Uninstall: stops and removes the unit, removes the program and the nft table
# `inet secgroup` (only if it exists); nothing else. /etc/secgroup and
# /var/lib/secgroup are kept unless --purge is given as well.
#
# --root DIR installs into DIR instead of / (staging, tests). Then nothing is
# done to the running system (no apt-get, systemctl or nft) unless
# SECGROUP_HOST_ACTIONS=1, which tests set together with stub commands.
#
# Environment (tests stub the commands):
#   NFT=nft CONNTRACK=conntrack SYSTEMCTL=systemctl APT_GET=apt-get   commands used
#   NODE=<node on PATH>     absolute path of the Node.js the wrapper runs
#   SECGROUP_SYSTEMD_BOOTED=1|0   overrides the "systemd is PID 1" check
#                                 (/run/systemd/system exists)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

NFT=${NFT:-nft}
CONNTRACK=${CONNTRACK:-conntrack}
SYSTEMCTL=${SYSTEMCTL:-systemctl}
APT_GET=${APT_GET:-apt-get}

UNIT=secgroup-agent.service
LIB_DIR=/usr/local/lib/secgroup
PROGRAM=$LIB_DIR/secgroup.cjs # secgroup.mjs for an ES module bundle (--bundle FILE.mjs)
PART=$LIB_DIR/secgroup-controller.cjs # loaded by `secgroup controller` only
LISTENER=$LIB_DIR/secgroup-nftwatch
MEMTRIM=$LIB_DIR/secgroup-memtrim.node
CTMARK=$LIB_DIR/secgroup-ctmark
NFTLOAD=$LIB_DIR/secgroup-nftload
WRAPPER=/usr/local/bin/secgroup
UNIT_DIR=/usr/local/lib/systemd/system
CONFIG_DIR=/etc/secgroup
CONFIG=$CONFIG_DIR/agent.yaml
TOKEN=$CONFIG_DIR/agent.token
STATE_DIRS=(/var/lib/secgroup /var/lib/private/secgroup) # the second: DynamicUser= keeps it there

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

root=/ mode=install purge=0 now=0 bundle="$repo/dist/secgroup.cjs" listener=''
while (($#)); do
  case $1 in
    --root) [[ $# -ge 2 ]] || die "--root needs a directory"; root=$2; shift 2 ;;
    --root=*) root=${1#--root=}; shift ;;
    --bundle) [[ $# -ge 2 ]] || die "--bundle needs a file"; bundle=$2; shift 2 ;;
    --bundle=*) bundle=${1#--bundle=}; shift ;;
    --listener) [[ $# -ge 2 ]] || die "--listener needs a file"; listener=$2; shift 2 ;;
    --listener=*) listener=${1#--listener=}; shift ;;
    --uninstall) mode=uninstall; shift ;;
    --purge) purge=1; shift ;;
    --now) now=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
((purge == 0)) || [[ $mode == uninstall ]] || die "--purge only goes with --uninstall"
[[ -d $root ]] || die "--root $root: no such directory"
root="$(cd "$root" && pwd)"
R=${root%/} # prefix for every path written; empty for /

if [[ -z $R ]]; then
  [[ $(id -u) -eq 0 ]] || die "run as root (or use --root DIR to stage into a directory)"
  host_actions=1
else
  host_actions=${SECGROUP_HOST_ACTIONS:-0}
fi
if [[ -n ${SECGROUP_SYSTEMD_BOOTED:-} ]]; then
  booted=$SECGROUP_SYSTEMD_BOOTED
elif [[ -d /run/systemd/system ]]; then
  booted=1
else
  booted=0
fi
use_systemctl() { ((host_actions)) && ((booted)); }
explain_no_systemctl() {
  if ((!host_actions)); then
    say "--root $root: not touching the running system (systemctl, nft, apt-get skipped)"
  elif [[ $mode == install ]]; then
    say "systemd is not running as PID 1 here: not calling systemctl; on a systemd machine run: systemctl daemon-reload && systemctl enable --now $UNIT"
  else
    say "systemd is not running as PID 1 here: not calling systemctl (nothing to stop or disable)"
  fi
}

# Writes stdin to DEST atomically with MODE (a running agent never sees half a file).
put() {
  local dest=$1 mode=$2 tmp
  tmp="$(mktemp "$(dirname "$dest")/.$(basename "$dest").XXXXXX")"
  cat >"$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dest"
}

# A command the agent runs: when CMD is missing, installs PACKAGE with apt-get
# (host actions), and a failed install is ON_FAILURE (die or say); without
# host actions, says that the machine this root is for NEEDS it.
need() {
  local cmd=$1 package=$2 on_failure=$3 needs=$4
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if ((host_actions)); then
    say "installing $package"
    DEBIAN_FRONTEND=noninteractive "$APT_GET" install -y --no-install-recommends "$package" >/dev/null ||
      "$on_failure" "apt-get install $package failed (run apt-get update first?)"
  else
    say "$cmd not found; the machine this root is for $needs"
  fi
}

# An optional file from next to the bundle: installs SRC as DEST with MODE and
# says so (with WHAT in brackets; nothing when WHAT is empty), or, without SRC,
# removes the DEST an earlier install left and says "no SRC WITHOUT".
optional() {
  local src=$1 dest=$2 mode=$3 what=$4 without=$5
  if [[ -f $src ]]; then
    put "$R$dest" "$mode" <"$src"
    [[ -z $what ]] || say "installed $dest ($what)"
  else
    rm -f "$R$dest"
    say "no $src $without"
  fi
}

do_install() {
  local src_unit="$repo/systemd/$UNIT" src_config="$repo/examples/config/agent.yaml"
  [[ -f $bundle ]] || die "$bundle not found: run 'npm run bundle' first or pass --bundle FILE"
  [[ -f $src_unit ]] || die "$src_unit not found"
  [[ -f $src_config ]] || die "$src_config not found"

  local node=${NODE:-$(command -v node || true)}
  [[ -n $node ]] || die "Node.js >= 22.15 is required, 24 recommended (node not found; set NODE=/path/to/node)"
  [[ $node == /* && $node != *"'"* ]] || die "NODE must be an absolute path without quotes, not $node"
  local version major minor
  version="$("$node" -p 'process.versions.node' 2>/dev/null)" || die "$node does not run"
  IFS=. read -r major minor _ <<<"$version"
  ((major > 22 || (major == 22 && ${minor:-0} >= 15))) || die "Node.js >= 22.15 is required, 24 recommended ($node is $("$node" --version))"

  local beside
  beside="$(dirname "$bundle")"
  need "$NFT" nftables die "needs the nftables package"
  # the flow mark's bits are cleared by secgroup-ctmark, else by conntrack(8) (src/nft/conntrack.ts); without either the agent works, unarmed (slower per packet)
  [[ -f $beside/$(basename "$CTMARK") ]] ||
    need "$CONNTRACK" conntrack say "should have the conntrack package (no secgroup-ctmark here: the agent's flow mark fast path needs one of the two; without it the agent runs unarmed)"

  install -d -m 0755 "$R$LIB_DIR" "$R$(dirname "$WRAPPER")" "$R$UNIT_DIR" "$R$CONFIG_DIR"
  # node tells the two formats apart by the name only: an ES module bundle keeps .mjs
  local old=$LIB_DIR/secgroup.mjs
  [[ $bundle != *.mjs ]] || { old=$PROGRAM; PROGRAM=$LIB_DIR/secgroup.mjs; }
  # the controller's part first: the program that loads it comes after it
  optional "$beside/$(basename "$PART")" "$PART" 0644 "" "beside the bundle: 'secgroup controller' will not run from this install (the agent does)"
  put "$R$PROGRAM" 0644 <"$bundle"
  put "$R$WRAPPER" 0755 <<EOF
#!/bin/sh
# secgroup: installed by scripts/install.sh (runs the bundled program)
exec '$node' '$PROGRAM' "\$@"
EOF
  put "$R$UNIT_DIR/$UNIT" 0644 <"$src_unit"
  # (the wrapper now runs the new name: the one an earlier install left is no longer used)
  rm -f "$R$old"
  say "installed $PROGRAM, $WRAPPER (Node.js $major at $node), $UNIT_DIR/$UNIT"
  [[ -z $listener || -f $listener ]] || die "--listener $listener not found (scripts/build-native.sh builds it)"
  optional "${listener:-$beside/$(basename "$LISTENER")}" "$LISTENER" 0755 "the drift monitor's listener" \
    "(scripts/build-native.sh builds it): the agent follows changes with nft monitor instead"
  optional "$beside/$(basename "$CTMARK")" "$CTMARK" 0755 "clears the flow mark's bits in the conntrack table" \
    "(scripts/build-native.sh builds it): the agent clears them with conntrack(8) instead"
  optional "$beside/$(basename "$NFTLOAD")" "$NFTLOAD" 0755 "sends a full apply to the kernel as the netlink batch the agent encodes" \
    "(scripts/build-native.sh builds it): the agent applies full tables with nft -f instead (slower for rule-heavy tables)"
  optional "$beside/$(basename "$MEMTRIM")" "$MEMTRIM" 0644 "gives the agent's free C heap back after bursts" \
    "(scripts/build-native.sh builds it): the agent runs without it (idle RSS a few MB higher)"

  local upgrade=0
  if [[ -e $R$CONFIG ]]; then
    upgrade=1
    say "kept the existing $CONFIG"
  else
    put "$R$CONFIG" 0644 <"$src_config"
    say "wrote $CONFIG: edit it (controller url, failsafe ports)"
  fi
  if [[ -e $R$TOKEN ]]; then
    say "kept the existing $TOKEN"
  else
    put "$R$TOKEN" 0600 </dev/null
    say "created an empty $TOKEN (0600): put this instance's controller token in it"
  fi

  if use_systemctl; then
    "$SYSTEMCTL" daemon-reload
    "$SYSTEMCTL" enable "$UNIT"
    if ((now)); then
      "$SYSTEMCTL" restart "$UNIT"
      say "enabled and (re)started $UNIT"
    elif ((upgrade)); then
      "$SYSTEMCTL" try-restart "$UNIT"
      say "enabled $UNIT (restarted if it was running)"
    else
      say "enabled $UNIT; start it once $CONFIG and $TOKEN are filled in: systemctl start $UNIT"
    fi
  else
    explain_no_systemctl
  fi
}

do_uninstall() {
  if use_systemctl; then
    "$SYSTEMCTL" disable --now "$UNIT" || say "systemctl disable --now $UNIT failed (not loaded?), going on"
  else
    explain_no_systemctl
  fi
  rm -f "$R$UNIT_DIR/$UNIT"
  if use_systemctl; then
    "$SYSTEMCTL" daemon-reload
    "$SYSTEMCTL" reset-failed "$UNIT" 2>/dev/null || true
  fi
  if [[ -e $R$UNIT_DIR/secgroup-controller.service || -e $R/etc/systemd/system/secgroup-controller.service ]]; then
    say "kept $PROGRAM and $WRAPPER: secgroup-controller.service still uses them"
  else
    rm -f "$R$WRAPPER"
    rm -rf "$R$LIB_DIR"
  fi
  if ((host_actions)); then
    # only our own table; `nft flush ruleset` would take other tables along
    if "$NFT" list table inet secgroup >/dev/null 2>&1; then
      "$NFT" delete table inet secgroup
      say "deleted the nft table inet secgroup"
    else
      say "no nft table inet secgroup to delete"
    fi
  fi
  if ((purge)); then
    rm -f "$R$CONFIG" "$R$TOKEN"
    rmdir "$R$CONFIG_DIR" 2>/dev/null || true
    local d
    for d in "${STATE_DIRS[@]}"; do [[ $d == /var/lib/* ]] && rm -rf "$R$d"; done
    say "removed the agent's configuration and state (--purge)"
  else
    say "kept $CONFIG_DIR and ${STATE_DIRS[0]} (add --purge to remove them)"
  fi
  say "uninstalled"
}

if [[ $mode == install ]]; then do_install; else do_uninstall; fi
