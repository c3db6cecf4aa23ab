#!/usr/bin/env bash
# Build secgroup-agent and secgroup-controller images from the local base image.
# Assumes `npm run build` has produced dist/ (dist/cli/main.js is the entry).
#
#   docker/build-images.sh        -> secgroup-agent:$TAG, secgroup-controller:$TAG,
#                                    secgroup-postgres:<hash> + :latest (docker/postgres-image.sh)
#
# The build context is staged (not the repo root, whose node_modules is 200 MB
# of mostly dev tools): app/dist, app/package.json ("type": "module") and
# app/node_modules with the production dependencies only (docker/prod-deps.mjs),
# copied from the local node_modules (plain JavaScript; the controller's store
# is node:sqlite). Images are built with the classic builder (DOCKER_BUILDKIT=0):
# the docker client here has no buildx.
#
# Environment:
#   SECGROUP_IMAGE_TAG   tag for both images (default: latest)
#   SECGROUP_DIST_DIR    the built dist/ to copy (default: <repo>/dist)
#   SECGROUP_IMAGE_DEPS  prod (default): copy production node_modules;
#                        none: dist/ is a self-contained bundle
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
tag="${SECGROUP_IMAGE_TAG:-latest}"
dist="${SECGROUP_DIST_DIR:-$repo/dist}"
deps="${SECGROUP_IMAGE_DEPS:-prod}"

say() { printf 'build-images.sh: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

docker info >/dev/null 2>&1 || die "no Docker engine answers; run docker/engine.sh first"
[[ -f $dist/cli/main.js ]] || die "$dist/cli/main.js not found; run 'npm run build' first"

t_all="$(now)"
base="$("$here/base-image.sh" | tail -n1)"

ctx="$(mktemp -d /tmp/secgroup-image-ctx.XXXXXX)"
trap 'rm -rf "$ctx"' EXIT
t="$(now)"
mkdir -p "$ctx/app"
cp -a "$dist" "$ctx/app/dist"
cp "$repo/package.json" "$ctx/app/package.json"
case $deps in
  prod)
    [[ -d $repo/node_modules ]] || die "$repo/node_modules missing; run 'npm ci' first"
    # Production dependency dirs, relative to the repo, without those nested in
    # another listed dir (copying the parent brings them along).
    { node "$here/prod-deps.mjs" "$repo" || die "cannot list the production dependencies"; } | LC_ALL=C sort -u |
      awk 'prev == "" || index($0, prev "/") != 1 { print; prev = $0 }' >"$ctx/deps.txt"
    [[ -s $ctx/deps.txt ]] || die "no production dependencies found"
    # -h: node_modules may be a symlink (git worktrees share the main checkout's).
    tar -C "$repo" -h -cf - -T "$ctx/deps.txt" | tar -C "$ctx/app" -xf -
    ;;
  none) ;;
  *) die "SECGROUP_IMAGE_DEPS must be prod or none, not $deps" ;;
esac
cp "$here/Dockerfile.agent" "$here/Dockerfile.controller" "$ctx/"
say "context staged in $(took "$t"): $(du -sh "$ctx/app" | cut -f1) ($(wc -l <"$ctx/deps.txt" 2>/dev/null || echo 0) dependency dirs)"

for role in agent controller; do
  t="$(now)"
  # The classic builder is deprecated in client 28 and says so on stderr; it is
  # the only builder this client has. --pull=false: the base exists locally only.
  DOCKER_BUILDKIT=0 docker build -q --pull=false \
    --build-arg "BASE_IMAGE=$base" \
    -f "$ctx/Dockerfile.$role" -t "secgroup-$role:$tag" "$ctx" >/dev/null 2>"$ctx/build-$role.log" || {
    cat "$ctx/build-$role.log" >&2
    die "docker build of secgroup-$role failed"
  }
  say "secgroup-$role:$tag built in $(took "$t")"
done
# The database of the HA topology (test/system/ha.test.ts, compose.yaml): no
# dist/ in it, cached by its inputs' hash, so usually a no-op.
t="$(now)"
"$here/postgres-image.sh" >/dev/null || die "docker/postgres-image.sh failed"
say "secgroup-postgres:latest ready in $(took "$t")"
# Rebuilds leave the previous images dangling; drop ours (only ours).
docker image prune -f --filter label=org.secgroup.role >/dev/null
say "done in $(took "$t_all") (base $base)"
echo "secgroup-agent:$tag secgroup-controller:$tag secgroup-postgres:latest"
