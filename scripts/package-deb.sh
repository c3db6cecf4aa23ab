#!/usr/bin/env bash
# npm run package: builds dist/deb/secgroup-agent_<version>_amd64.deb and
# dist/deb/secgroup-controller_<version>_amd64.deb with dpkg-deb (no debhelper).
#
#   npm run package        (Node >= 22: scripts/setup.sh installs Node 24)
#
# Both carry the single executable (scripts/build-sea.mjs; Node.js inside, none
# needed on the host; the controller's store is Node's built-in node:sqlite, so
# the controller has no native addon). The agent's also carries the drift
# monitor's listener (native/secgroup-nftwatch.c, scripts/build-native.sh) in
# /usr/lib/secgroup/secgroup-nftwatch, the flow mark's conntrack sweep
# (native/secgroup-ctmark.c) in /usr/lib/secgroup/secgroup-ctmark, the sender
# of full applies as netlink batches (native/secgroup-nftload.c) in
# /usr/lib/secgroup/secgroup-nftload, and the
# addon that gives its free C heap back (native/secgroup-memtrim.c) in
# /usr/lib/secgroup/secgroup-memtrim.node, where the agent looks for them. The controller's also carries the web
# console's static files (dist/console) in /usr/lib/secgroup-controller/console.
# Then lintian, when installed: remaining
# tags are listed, with their reasons, in packaging/debian/lintian-overrides.*
# (shipped).
#
# Environment: SECGROUP_SEA_NODE (node binary to embed, default the node
# running npm), SECGROUP_DEB_DIR (default dist/deb), SECGROUP_DEB_VERSION
# (default package.json's version; tests build an "upgrade" with it).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
say() { printf 'package: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

node_bin="$(readlink -f "${SECGROUP_SEA_NODE:-$(command -v node)}")"
version="${SECGROUP_DEB_VERSION:-$(node -p 'require("./package.json").version')}"
[[ $version =~ ^[0-9][0-9A-Za-z.+~-]*$ ]] || die "bad version $version"
out="${SECGROUP_DEB_DIR:-$repo/dist/deb}"
work="$repo/dist/deb-build"
rm -rf "$work"
mkdir -p "$work" "$out"

SECGROUP_SEA_NODE="$node_bin" node scripts/build-sea.mjs >&2
sea="$repo/dist/secgroup"
bash scripts/build-native.sh >&2
# the web console (npm run build:console) goes next to the controller's executable, where it looks for it
[[ -f dist/console/index.html ]] || npm run build:console >&2

doc() { # doc <root> <package>
  local d="$1/usr/share/doc/$2"
  install -d "$d"
  sed -e "s/@PACKAGE@/$2/" packaging/debian/copyright >"$d/copyright"
  printf '%s (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- secgroup maintainers <secgroup@localhost>  %s\n' \
    "$2" "$version" "$version" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" |
    gzip -9n >"$d/changelog.gz"
  install -D -m 0644 "packaging/debian/lintian-overrides.$3" "$1/usr/share/lintian/overrides/$2"
}

control() { # control <root> <package> <depends> <description...>
  local root="$1" pkg="$2" depends="$3"
  shift 3
  local size
  size="$(du -k -s --apparent-size --exclude=DEBIAN "$root" | cut -f1)"
  cat >"$root/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: amd64
Maintainer: secgroup maintainers <secgroup@localhost>
Installed-Size: $size
Depends: $depends
Section: net
Priority: optional
Homepage: https://github.com/secgroup/secgroup
$(printf '%s\n' "$@")
CONTROL
  (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
}

libs='libc6 (>= 2.28), libgcc-s1 (>= 3.0), libstdc++6 (>= 12)'

# ---- secgroup-agent ---------------------------------------------------------
r="$work/agent"
install -d -m 0755 "$r/DEBIAN" "$r/usr/bin" "$r/lib/systemd/system" "$r/etc/secgroup"
install -m 0755 "$sea" "$r/usr/bin/secgroup"
install -D -m 0755 -s dist/secgroup-nftwatch "$r/usr/lib/secgroup/secgroup-nftwatch"
install -D -m 0755 -s dist/secgroup-ctmark "$r/usr/lib/secgroup/secgroup-ctmark"
install -D -m 0755 -s dist/secgroup-nftload "$r/usr/lib/secgroup/secgroup-nftload"
install -D -m 0644 -s dist/secgroup-memtrim.node "$r/usr/lib/secgroup/secgroup-memtrim.node"
sed 's#/usr/local/bin/secgroup#/usr/bin/secgroup#; s#Installed by scripts/install.sh#Installed by the secgroup-agent package (or scripts/install.sh)#' \
  systemd/secgroup-agent.service >"$r/lib/systemd/system/secgroup-agent.service"
chmod 0644 "$r/lib/systemd/system/secgroup-agent.service"
install -m 0644 examples/config/agent.yaml "$r/etc/secgroup/agent.yaml"
doc "$r" secgroup-agent agent
echo /etc/secgroup/agent.yaml >"$r/DEBIAN/conffiles"
for s in postinst prerm postrm; do install -m 0755 "packaging/debian/agent.$s" "$r/DEBIAN/$s"; done
control "$r" secgroup-agent "$libs, nftables, iproute2, systemd (>= 246)" \
  'Description: security groups for this host, enforced with nftables (agent)' \
  ' The secgroup agent enforces the cloud-style security groups of this host' \
  ' in the nftables table "inet secgroup", kept in sync with a secgroup' \
  ' controller over WebSocket. It keeps the last policy when the controller is' \
  ' unreachable and after reboots. Put the instance token into' \
  ' /etc/secgroup/agent.token and the controller URL into' \
  ' /etc/secgroup/agent.yaml; until then it waits and enforces nothing.' \
  ' .' \
  ' Single executable: Node.js is built in, none is needed on the host.'

# ---- secgroup-controller -----------------------------------------------------
r="$work/controller"
lib=/usr/lib/secgroup-controller
install -d -m 0755 "$r/DEBIAN" "$r$lib" "$r/lib/systemd/system" "$r/etc/secgroup"
install -m 0755 "$sea" "$r$lib/secgroup"
# served at /console (src/cli/console-dir.ts finds it beside the executable)
(cd dist/console && find . -type f -printf '%P\0' | sort -z | xargs -0 -I{} install -D -m 0644 {} "$r$lib/console/{}")
sed "s#/usr/local/bin/secgroup#$lib/secgroup#; s#Installed by hand for now.*#Installed by the secgroup-controller package.#" \
  systemd/secgroup-controller.service >"$r/lib/systemd/system/secgroup-controller.service"
chmod 0644 "$r/lib/systemd/system/secgroup-controller.service"
install -m 0644 examples/config/controller.yaml "$r/etc/secgroup/controller.yaml"
doc "$r" secgroup-controller controller
echo /etc/secgroup/controller.yaml >"$r/DEBIAN/conffiles"
for s in postinst prerm postrm; do install -m 0755 "packaging/debian/controller.$s" "$r/DEBIAN/$s"; done
control "$r" secgroup-controller "$libs, systemd (>= 246)" \
  'Description: security groups for Linux hosts: controller (API and agent hub)' \
  ' The secgroup controller serves a Huawei VPC v3 compatible security group' \
  ' API over HTTP and pushes each instance'"'"'s policy to its agent over' \
  ' WebSocket. State is kept in SQLite under /var/lib/secgroup-controller.' \
  ' Configure API tokens in /etc/secgroup/controller.yaml, then start' \
  ' secgroup-controller.service.'

for p in agent controller; do
  deb="$out/secgroup-${p}_${version}_amd64.deb"
  dpkg-deb --root-owner-group -Zgzip -z6 --build "$work/$p" "$deb" >/dev/null
  say "$(basename "$deb"): $(du -h "$deb" | cut -f1)"
done
if command -v lintian >/dev/null 2>&1; then
  lintian --fail-on error,warning "$out/secgroup-agent_${version}_amd64.deb" "$out/secgroup-controller_${version}_amd64.deb" >&2 ||
    die "lintian found tags that are not overridden (packaging/debian/lintian-overrides.*)"
  say "lintian: clean (overrides: packaging/debian/lintian-overrides.*)"
else
  say "lintian not installed (apt-get install lintian): not checked"
fi
rm -rf "$work"
ls -1 "$out"/*_"$version"_amd64.deb
