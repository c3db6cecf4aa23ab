#!/usr/bin/env bash
# Make a Docker engine available for the system tests, as inert for the host
# as Docker allows.
#
#   docker/engine.sh          install docker.io if missing, start dockerd if no
#                             engine answers, wait for `docker info`
#   docker/engine.sh --stop   remove containers and networks labelled
#                             org.secgroup.test, then stop the dockerd this
#                             script started (only that one)
#
# The daemon runs with docker/daemon.json (see docker/README.md): no iptables or
# ip6tables rules, no ip_forward change, no masquerading, no default docker0
# bridge, and networks only from 198.19.0.0/16. Idempotent: a second run
# finds the engine answering and does nothing.
#
# Environment:
#   SECGROUP_DOCKERD_LOG       daemon log (default /var/log/secgroup-dockerd.log)
#   SECGROUP_DOCKERD_TIMEOUT   seconds to wait for `docker info` (default 60)
#   SECGROUP_DOCKER_STORAGE_DRIVER  force a storage driver (default: dockerd's
#                              choice, overlay2 on ext4; vfs works anywhere, slowly)
#   SECGROUP_ALLOW_FORWARDING=1  start even though the root namespace forwards
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
config="$here/daemon.json"
log="${SECGROUP_DOCKERD_LOG:-/var/log/secgroup-dockerd.log}"
timeout="${SECGROUP_DOCKERD_TIMEOUT:-60}"
# Marker: the pid of the dockerd that this script started (not dockerd's own
# pidfile, so that --stop never touches an engine somebody else started).
marker=/run/secgroup-dockerd.pid

say() { printf 'engine.sh: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

engine_up() { docker info >/dev/null 2>&1; }

check_forwarding() {
  # With iptables off, Docker's --internal adds no isolation of its own: a
  # container's default route points at the bridge in the root namespace, and
  # only the root namespace not forwarding keeps its packets from leaving the
  # machine. So refuse to run containers on a machine that forwards.
  local v4 v6
  v4="$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null || echo 0)"
  v6="$(cat /proc/sys/net/ipv6/conf/all/forwarding 2>/dev/null || echo 0)"
  if [[ $v4 != 0 || $v6 != 0 ]]; then
    if [[ ${SECGROUP_ALLOW_FORWARDING:-} == 1 ]]; then
      say "warning: the root namespace forwards (ipv4 $v4, ipv6 $v6); containers on test networks could reach beyond this machine"
    else
      die "the root namespace forwards packets (net.ipv4.ip_forward=$v4, net.ipv6.conf.all.forwarding=$v6): with dockerd's iptables off, test containers could send beyond this machine. Not changing it for you; SECGROUP_ALLOW_FORWARDING=1 overrides"
    fi
  fi
}

our_pid() {
  # Prints the pid from the marker if that process is still a dockerd.
  [[ -f $marker ]] || return 1
  local pid
  pid="$(cat "$marker")"
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]] || return 1
  printf '%s\n' "$pid"
}

stop() {
  local pid
  if ! pid="$(our_pid)"; then
    rm -f "$marker"
    if engine_up; then
      say "an engine answers, but not one this script started: leaving it alone"
    else
      say "no dockerd started by this script is running"
    fi
    return 0
  fi
  # Stopping dockerd kills the containers, but a network's bridge (and its
  # IPv6 gateway address) stays in the root namespace until the network is
  # removed through a running engine. Remove what the tests labelled; name
  # any other network that is left.
  local ids
  mapfile -t ids < <(docker ps -aq --filter label=org.secgroup.test 2>/dev/null || true)
  if ((${#ids[@]} > 0)); then
    say "removing test containers: ${ids[*]}"
    docker rm -f "${ids[@]}" >/dev/null || true
  fi
  mapfile -t ids < <(docker network ls -q --filter label=org.secgroup.test 2>/dev/null || true)
  if ((${#ids[@]} > 0)); then
    say "removing test networks: ${ids[*]}"
    docker network rm "${ids[@]}" >/dev/null || true
  fi
  mapfile -t ids < <(docker network ls --filter type=custom --format '{{.Name}}' 2>/dev/null || true)
  if ((${#ids[@]} > 0)); then
    say "warning: networks left (their bridges stay in the root namespace): ${ids[*]}"
  fi
  say "stopping dockerd (pid $pid)"
  kill -TERM "$pid"
  local i
  for ((i = 0; i < 60; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    die "dockerd (pid $pid) did not exit within 30 s; see $log"
  fi
  rm -f "$marker"
  say "dockerd stopped"
}

need_cmd() {
  command -v docker >/dev/null 2>&1 && command -v dockerd >/dev/null 2>&1
}

install_engine() {
  say "installing docker.io from Debian's packages"
  [[ $(id -u) == 0 ]] || die "installing docker.io needs root"
  # Without systemd, the package's postinst would start dockerd through
  # /etc/init.d/docker with Docker's defaults (iptables rules, ip_forward=1,
  # docker0 on 172.17.0.0/16). Deny service starts for the install, unless the
  # machine already does (Debian container images ship such a policy-rc.d).
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io
  } >&2 || rc=$?
  if ((own_policy)); then rm -f /usr/sbin/policy-rc.d; fi
  ((rc == 0)) || die "apt-get install docker.io failed (exit $rc)"
}

start() {
  check_forwarding
  if engine_up; then
    say "engine already answers: $(docker info --format '{{.ServerVersion}}, storage {{.Driver}}, cgroup v{{.CgroupVersion}}' 2>/dev/null)"
    if ! our_pid >/dev/null; then
      say "note: not started by this script; its iptables/address-pool settings are unknown"
    fi
    return 0
  fi
  need_cmd || install_engine
  need_cmd || die "docker/dockerd still not found after installing docker.io"
  [[ $(id -u) == 0 ]] || die "starting dockerd needs root"

  local pid
  if pid="$(our_pid)"; then
    die "dockerd (pid $pid) from an earlier run is running but does not answer; see $log, or run $0 --stop"
  fi

  local args=(--config-file "$config")
  if [[ -n ${SECGROUP_DOCKER_STORAGE_DRIVER:-} ]]; then
    args+=(--storage-driver "$SECGROUP_DOCKER_STORAGE_DRIVER")
  fi
  mkdir -p "$(dirname "$log")"
  say "starting dockerd, log in $log"
  printf '\n==== %s engine.sh starting dockerd %s\n' "$(date -u +%FT%TZ)" "${args[*]}" >>"$log"
  # setsid: own session, so that the caller's job control or a CI step that
  # ends does not take dockerd down with a signal meant for the step.
  setsid dockerd "${args[@]}" >>"$log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$marker"

  local start_s=$SECONDS
  while ! engine_up; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$marker"
      say "dockerd exited during start-up; last lines of $log:"
      tail -n 30 "$log" >&2
      die "the Docker engine could not start"
    fi
    if ((SECONDS - start_s >= timeout)); then
      say "no answer from dockerd (pid $pid) after ${timeout}s; last lines of $log:"
      tail -n 30 "$log" >&2
      die "the Docker engine did not come up (left running; '$0 --stop' stops it)"
    fi
    sleep 0.5
  done
  if ! our_pid >/dev/null; then
    say "warning: pid $pid in $marker is not dockerd; '$0 --stop' will not find it"
  fi
  say "engine up after $((SECONDS - start_s))s: $(docker info --format '{{.ServerVersion}}, storage {{.Driver}}, cgroup v{{.CgroupVersion}}')"
}

case "${1:-}" in
  "") start ;;
  --stop) stop ;;
  -h | --help) sed -n '2,21p' "$0" ;;
  *) die "unknown argument: $1 (use --stop or nothing)" ;;
esac
