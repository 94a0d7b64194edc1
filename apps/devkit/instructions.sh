#!/usr/bin/env bash
# Instruction counts (valgrind callgrind) of fixed runs, which repeat on a busy machine
# where timings do not:
#   pipeline  the pipeline alone (`tributary-dev bench --only pipeline`, no Kafka)
#   rollup    tributary-rollup reading 20,000 generated records from the mock broker
#   replay    its restart without a checkpoint: the rebuild from the committed plans
#   writer    tributary-writer writing the same 20,000 points into the emulated ring
#   full      the rollup runtime with rollup + CUSUM in `tributary-dev runtime-peer`
#   decode    the same runtime consuming and decoding only (`runtime-peer --decode-only`):
#             full - decode is what the rollup, CUSUM and their outputs cost
# Each count is the whole measured process, start to graceful stop (librdkafka's threads
# included). The broker, the ring and the load generator run outside valgrind.
#
#   apps/devkit/instructions.sh [RUNS]        # default 3 runs of each, one line per run
#   BIN=/other/target/release apps/devkit/instructions.sh   # measure another build
#   POINTS=500 apps/devkit/instructions.sh 1                 # 5x the records (SERIES too)
#
# BIN holds the binaries measured; DEV holds the tributary-dev that runs the broker, the
# ring and the load generator (default: BIN). KEEP=dir keeps the callgrind files there
# (NAME-RUN.callgrind) for callgrind_annotate.
set -euo pipefail

RUNS=${1:-3}
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}
BIN=${BIN:-$TARGET/release}
DEV=${DEV:-$BIN}
SERIES=${SERIES:-200}
POINTS=${POINTS:-100}
RECORDS=$((SERIES * POINTS))
PARTITIONS=4
WORK=$(mktemp -d /tmp/tributary-instructions.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# metric ADMIN NAME: the value of an unlabelled metric, 0 when absent.
metric() {
    curl -sf "http://$1/metrics" 2>/dev/null | awk -v n="$2" '$1 == n { v = $2 } END { print (v == "" ? 0 : v) }'
}

# wait_metric ADMIN NAME MIN SECONDS
wait_metric() {
    local end=$((SECONDS + $4))
    while [ "$SECONDS" -lt "$end" ]; do
        if awk -v v="$(metric "$1" "$2")" -v m="$3" 'BEGIN { exit !(v >= m) }'; then return 0; fi
        sleep 1
    done
    echo "timed out waiting for $2 >= $3 at $1" >&2
    return 1
}

# measured NAME ADMIN METRIC MIN -- COMMAND...: runs COMMAND under callgrind until METRIC
# reaches MIN, stops it with SIGTERM and prints its instruction count.
measured() {
    local name=$1 admin=$2 name_metric=$3 min=$4
    shift 5
    local out="$WORK/$name.callgrind"
    valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$WORK/$name.log" 2>&1 &
    local pid=$!
    if ! wait_metric "$admin" "$name_metric" "$min" 900; then
        tail -20 "$WORK/$name.log" >&2
        kill "$pid"
        return 1
    fi
    # Outputs acknowledged and committed: the graceful stop drains and commits the rest.
    kill -TERM "$pid"
    wait "$pid" || true
    awk '/^totals:/ { print $2 }' "$out"
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$out" "$KEEP/$name-$RUN_NO.callgrind"; fi
}

# peer NAME FLAGS...: `tributary-dev runtime-peer` under callgrind over every record.
peer() {
    local name=$1
    shift
    local out="$WORK/$name.callgrind"
    valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN/tributary-dev" runtime-peer \
        --brokers "$brokers" --topic metrics --records "$RECORDS" --workers 2 "$@" >"$WORK/$name.log" 2>&1 ||
        { tail -20 "$WORK/$name.log" >&2; return 1; }
    awk '/^totals:/ { print $2 }' "$out"
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$out" "$KEEP/$name-$RUN_NO.callgrind"; fi
}

run_once() {
    local run=$1
    RUN_NO=$run
    local port admin http cql_port group
    port=$(free_port)
    "$DEV/tributary-dev" kafka --port "$port" --partitions "$PARTITIONS" \
        --topics metrics,rollups,anomalies,dead-letter >"$WORK/kafka.log" 2>&1 &
    PIDS+=($!)
    brokers="127.0.0.1:$port"
    for _ in $(seq 60); do grep -q "bootstrap.servers=" "$WORK/kafka.log" && break; sleep 0.5; done
    "$DEV/tributary-dev" produce --brokers "$brokers" --topic metrics --series "$SERIES" \
        --points "$POINTS" --seed 42 >/dev/null 2>&1

    local pipeline
    pipeline=$(valgrind --tool=callgrind --callgrind-out-file="$WORK/pipeline.callgrind" \
        "$BIN/tributary-dev" bench --only pipeline --records 100000 --series 1000 >/dev/null 2>&1 &&
        awk '/^totals:/ { print $2 }' "$WORK/pipeline.callgrind")

    group="instructions-$run-$$"
    admin="127.0.0.1:$(free_port)"
    local rollup replay
    rollup=$(measured rollup "$admin" tributary_records_consumed_total "$RECORDS" -- \
        "$BIN/tributary-rollup" --brokers "$brokers" --input-topic metrics --output-topic rollups \
        --group "$group" --workers 2 --admin-listen "$admin" --log warn)
    replay=$(measured replay "$admin" tributary_replays_finished_total "$PARTITIONS" -- \
        "$BIN/tributary-rollup" --brokers "$brokers" --input-topic metrics --output-topic rollups \
        --group "$group" --workers 2 --admin-listen "$admin" --log warn)

    cql_port=$(free_port)
    http="127.0.0.1:$(free_port)"
    "$DEV/tributary-dev" cql --nodes 3 --port "$cql_port" --http "$http" >"$WORK/cql.log" 2>&1 &
    PIDS+=($!)
    sleep 2
    "$BIN/tributary-writer" schema apply --contact-points "127.0.0.1:$cql_port" \
        --keyspace tributary --replication-factor 1 --log warn
    local writer
    writer=$(measured writer "$admin" tributary_writer_rows_written_total "$RECORDS" -- \
        "$BIN/tributary-writer" --brokers "$brokers" --contact-points "127.0.0.1:$cql_port" \
        --keyspace tributary --metrics-topic metrics --rollups-topic "" --anomalies-topic "" \
        --group "writer-$group" --admin-listen "$admin" --log warn)

    # The runtime peers stop by themselves once they have consumed every record.
    local full decode
    full=$(peer full --group "full-$group")
    decode=$(peer decode --group "decode-$group" --decode-only)

    printf '%-4s %16s %16s %16s %16s %16s %16s\n' "$run" "$pipeline" "$rollup" "$replay" "$writer" "$full" "$decode"
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
}

echo "instructions (callgrind Ir) of $BIN, $RECORDS records in $PARTITIONS partitions"
printf '%-4s %16s %16s %16s %16s %16s %16s\n' run pipeline rollup replay writer full decode
for run in $(seq "$RUNS"); do
    run_once "$run"
done
