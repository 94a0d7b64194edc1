#!/usr/bin/env bash
# The main job on embedded defaults: embedded Kafka (librdkafka's mock cluster), the load
# generator, tributary-rollup and tributary-detector, and tributary-writer into the
# emulated CQL ring (3 nodes on 127.0.0.1-3), in one process, narrated.
# Extra arguments go to `tributary-dev demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash apps/devkit/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"
cargo build --release --bin tributary-dev
exec "$CARGO_TARGET_DIR/release/tributary-dev" demo "$@"
