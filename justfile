# wsnotify tasks. `just` lists them; `just test` is what CI runs.
set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Run the server with the embedded broker on 127.0.0.1:8050 (flags pass through).
run *ARGS:
    cargo run --release --bin wsnotify -- {{ARGS}}

# Every test: unit, protocol, integration (in-process, the real binary, Redis).
test:
    #!/usr/bin/env bash
    set -euo pipefail
    if docker info >/dev/null 2>&1; then
        # Pull the configured Redis image, or build one from the local redis-server.
        export WSNOTIFY_REDIS_IMAGE="$(bash scripts/redis-image.sh)"
        echo "Redis tests use the container image $WSNOTIFY_REDIS_IMAGE"
    fi
    cargo test --all-targets
    cargo test --doc

# Images built offline, deploy/compose.yaml with three replicas behind nginx,
# one stopped under load (docs/DEPLOY.md); `just test` runs it too when Docker answers.
# The deploy test alone (compose, 3 replicas, nginx).
deploy-test:
    cargo test --test deploy -- --nocapture

# Print the Redis image for the tests, building it locally if it cannot be pulled.
redis-image:
    bash scripts/redis-image.sh

# Criterion micro-benchmarks (protocol, frames, hub fan-out).
bench *ARGS:
    cargo bench --bench hub --bench protocol {{ARGS}}

# Fan-out benchmark: the floor server, wsnotify and the axum baseline in one run,
# servers on core 0, the generator on core 1 (docs/BENCHMARKS.md §1). Flags go to `fanout`.
bench-fanout *ARGS: bench-build
    ./target/release/fanout {{ARGS}}

# The fan-out benchmark with sockudo beside them, installed into target/peers/ when
# missing (bench/peers.sh; needs protobuf-compiler). Not part of `just test` or CI.
bench-peers *ARGS: bench-build
    bash bench/peers.sh
    ./target/release/fanout --servers floor,wsnotify,axum,sockudo {{ARGS}}

# Per-user notifications vs wsnotify's broadcast, two instances on one Redis, a connection
# storm with vs without JWT; flags go to `fanout` (--clients 1000 for a quick look).
# The fan-out benchmark's other scenarios, each against its baseline in one run.
bench-scenarios *ARGS: bench-build
    ./target/release/fanout --scenarios notify,redis,storm {{ARGS}}

# The same with sockudo beside wsnotify (private channels, its Redis adapter).
bench-scenarios-peers *ARGS: bench-build
    bash bench/peers.sh
    ./target/release/fanout --scenarios notify,redis,storm --servers wsnotify,sockudo {{ARGS}}

# goose load scenarios against a running server.
loadtest *ARGS:
    cargo run --release --bin loadtest -- {{ARGS}}

# Format the code.
fmt:
    cargo fmt --all

# Fail if the code is not formatted.
fmt-check:
    cargo fmt --all -- --check

# Clippy on every target with warnings denied.
lint:
    cargo clippy --all-targets -- -D warnings

# Build the release server and the benchmark tools (bench/).
bench-build:
    cargo build --release -p wsnotify --bin wsnotify
    cargo build --release -p wsnotify-bench

# docs/BENCHMARKS.md §4; flags go to `reliable fanout` (--syscalls, --publishers 4, --modes redis, …).
# Reliable delivery: fan-out to 10k clients, HISTORY_SIZE=100 vs 0, memory and Redis mode.
bench-history *ARGS: bench-build
    ./target/release/reliable fanout {{ARGS}}

# Then a 10-minute publish flood with history on and off (--flood-minutes 1 for a quick look).
# Reliable delivery: RSS per idle JSON connection, and RSS/history under a 10-minute publish flood.
bench-history-memory *ARGS: bench-build
    ./target/release/reliable memory {{ARGS}}

# Two instances on a private Redis; A is drained with SIGTERM under steady publishing through B.
# Reliable delivery: 10k clients of a drained instance resume on another, with vs without since.
bench-resume *ARGS: bench-build
    ./target/release/reliable resume {{ARGS}}

# Reliable delivery: long-poll wake-up of 1k pollers vs the same broadcasts on 1k WebSockets.
bench-poll *ARGS: bench-build
    ./target/release/reliable poll {{ARGS}}

# A drained with SIGTERM, its clients move to B, DRAIN_RECONNECT_SPREAD=10 vs 0 in one run (--spreads, --clients, …).
# Reconnect storm: peak accepts/s and p99 connect time on the surviving instance, spread hint vs none.
bench-storm *ARGS: bench-build
    ./target/release/reliable storm {{ARGS}}

# 3 instances, 10k clients of 5k users; six redis-server processes joined by redis-cli --cluster create.
# Cross-instance notifications/s and p99 on one Redis vs a 3-primary Redis Cluster, with each node's Pub/Sub load.
bench-cluster *ARGS: bench-build
    ./target/release/reliable cluster {{ARGS}}
