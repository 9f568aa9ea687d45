#!/usr/bin/env bash
# Installs the peer servers `just bench-peers` measures, when missing, into
# target/peers/ (a cache: nothing here is part of the build, the tests or CI).
#
# sockudo 5.2 (Pusher protocol) from crates.io, with the local and Redis
# adapters only; its build needs protoc (Debian: protobuf-compiler). The
# build takes many minutes: it runs on core 1 at low priority.
set -euo pipefail

root="${PEERS_DIR:-target/peers}"
sockudo="$root/sockudo/bin/sockudo"
version="5.2.0"

if [ -x "$sockudo" ]; then
    echo "sockudo: $sockudo ($("$sockudo" --version 2>/dev/null || echo "version $version"))"
    exit 0
fi
if ! command -v protoc >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y protobuf-compiler
    else
        echo "sockudo's build needs protoc: apt-get install -y protobuf-compiler" >&2
        exit 1
    fi
fi
echo "installing sockudo $version into $root/sockudo (several minutes)"
taskset -c 1 nice cargo install sockudo --version "$version" --locked \
    --no-default-features --features local,redis \
    --root "$root/sockudo" --target-dir "$root/build"
