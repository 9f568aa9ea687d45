#!/usr/bin/env bash
# Installs what `just test` needs beyond Rust, on Debian (as root, or with
# sudo): redis-server (the Redis test image is built from it where no
# registry serves one, and it is the stand-in where Docker is absent),
# Chromium and chromedriver (tests/browser.rs), the TypeScript compiler
# (tests/client_types.rs), nginx (the proxy tests), and what the seeds'
# own clients and commands need (tests/seeds.rs): Debian's python3 with
# websockets and PyJWT, curl, jq, redis-cli. Each is skipped if already
# there; docker-compose too where Docker runs without compose v2 (the
# deploy test). CI (.ci/run) runs this first.
set -euo pipefail

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# command -> Debian package
declare -A wanted=(
    [redis-server]=redis-server
    [chromium]=chromium
    [chromedriver]=chromium-driver
    [tsc]=node-typescript
    [nginx]=nginx
    [curl]=curl
    [jq]=jq
    [redis-cli]=redis-tools
    [systemd-analyze]=systemd
)
# Python module -> Debian package, checked with Debian's own interpreter
# (the one these packages install into; tests/seeds.rs runs it too).
declare -A wanted_python=(
    [websockets]=python3-websockets
    [jwt]=python3-jwt
)
missing=()
for cmd in "${!wanted[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${wanted[$cmd]}")
done
for module in "${!wanted_python[@]}"; do
    /usr/bin/python3 -c "import $module" >/dev/null 2>&1 || missing+=("${wanted_python[$module]}")
done
# The deploy test (tests/deploy.rs) drives deploy/compose.yaml where Docker
# runs: with compose v2 if the engine has it, else Debian's docker-compose.
if command -v docker >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1 &&
    ! docker compose version >/dev/null 2>&1; then
    missing+=(docker-compose)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "test-deps: installing ${missing[*]}"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Only the binaries are wanted: packaged services would hold ports 6379 and 80.
for service in redis-server nginx; do
    (as_root systemctl stop "$service" || as_root service "$service" stop || true) >/dev/null 2>&1
done
