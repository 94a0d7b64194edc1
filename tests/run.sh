#!/usr/bin/env bash
# The whole test suite: installs prerequisites, checks formatting and lints, builds every
# crate once (release profile, shared by tests, benches and the binaries the end-to-end
# tests start as processes), then runs unit, property and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash apps/devkit/setup.sh
# A target directory outside the clone so repeated runs (and CI) reuse the build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
start=$(date +%s)
echo "::: cargo fmt --check"
cargo fmt --all -- --check
echo "::: cargo clippy (release profile, -D warnings)"
cargo clippy --release --workspace --all-targets -- -D warnings
echo "::: cargo build --release (binaries the end-to-end tests run as processes)"
cargo build --release --workspace --bins
echo "::: cargo test --release"
cargo test --release --workspace
echo "::: test suite finished in $(( $(date +%s) - start ))s"
