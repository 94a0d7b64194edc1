#!/usr/bin/env python3
"""Tributary and its peers on the same broker and input, in one run:
`python3 apps/devkit/peers/peers.py [--records N] [--series S] [--partitions P] [--runs R]`.

Starts tansu (in memory), produces the same JSON records once per run, and times each
peer over the records it counts after its first one:
- Tributary's rollup + CUSUM: the rollup app's runtime in `tributary-dev runtime-peer`
  (its process CPU clock, ns; no metrics endpoint scraped);
- the same runtime consuming and decoding only (`runtime-peer --decode-only`), the limit;
- Quix Streams (quix_rollup.py; getrusage);
- a naive detector that writes every event to the emulated CQL ring and reads the
  series' last 50 back for CUSUM (`tributary-dev naive-peer`; the ring's CPU beside it).
Prints each figure's median, min and max, and Tributary's ratio to each per CPU-second.
Needs `pip install quixstreams` and a release build (BIN=dir of the binaries, default
~/.cache/tributary/target/release).
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(os.environ.get("BIN", Path.home() / ".cache/tributary/target/release"))
TANSU = os.environ.get("TANSU") or shutil.which("tansu") or str(Path.home() / ".cargo/bin/tansu")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"{what} exited: {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    sys.exit(f"{what} not listening on {port}")


def create_topics(brokers, names, partitions):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": brokers})
    # Quix Streams reads these settings back and fails without them.
    config = {"retention.ms": "604800000", "retention.bytes": "-1"}
    futures = admin.create_topics([NewTopic(n, partitions, 1, config=config) for n in names])
    for f in futures.values():
        f.result(30)


def task_cpu(pid):
    """CPU seconds of every live thread of `pid` (ns resolution)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def quix(brokers, topic, records, partitions):
    out = f"quix-rollups-{time.time_ns()}"
    create_topics(brokers, [out], partitions)
    done = subprocess.run([sys.executable, str(HERE / "quix_rollup.py"), brokers, topic, out, str(records)],
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        sys.exit(f"quix_rollup.py failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def dev_peer(args, timeout=1800):
    """Runs a `tributary-dev` peer subcommand; returns its closing JSON line."""
    done = subprocess.run([str(BIN / "tributary-dev"), *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, RUST_LOG="warn"))
    if done.returncode != 0:
        sys.exit(f"tributary-dev {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def runtime(*flags):
    def run(brokers, topic, records, partitions):
        return dev_peer(["runtime-peer", "--brokers", brokers, "--topic", topic, "--records", str(records),
                         "--group", f"runtime-peer-{time.time_ns()}", *flags])
    return run


def naive(brokers, topic, records, partitions):
    """The read-back detector against a fresh 3-node emulated ring (RF 1). Its CPU is the
    detector's own; the ring's, over the detector's whole run, is reported beside it."""
    port = free_port()
    ring = subprocess.Popen([str(BIN / "tributary-dev"), "cql", "--nodes", "3", "--port", str(port), "--http", ""],
                            env=dict(os.environ, RUST_LOG="warn"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, ring, "the emulated ring")
        before = task_cpu(ring.pid)
        r = dev_peer(["naive-peer", "--brokers", brokers, "--topic", topic, "--records", str(records),
                      "--contact-points", f"127.0.0.1:{port}"])
        r["ring_cpu"] = task_cpu(ring.pid) - before
    finally:
        ring.terminate()
        ring.wait(30)
    return r


PEERS = {
    "tributary": ("Tributary rollup + CUSUM", runtime()),
    "decode": ("Tributary runtime, consume + decode only", runtime("--decode-only")),
    "quix": ("Quix Streams 5m/1h/1d", quix),
    "naive": ("naive read-back detector (Anomalia Machina style)", naive),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--series", type=int, default=1_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--peers", default=",".join(PEERS),
                    help=f"comma-separated, of {', '.join(PEERS)}")
    a = ap.parse_args()
    chosen = [PEERS[p] for p in a.peers.split(",")]
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    brokers = f"127.0.0.1:{port}"
    tansu = subprocess.Popen([TANSU, "broker", "--listener-url", url, "--advertised-listener-url", url,
                              "--storage-engine", "memory://tansu/"],
                             env=dict(os.environ, RUST_LOG="warn"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = {}
    try:
        wait_port(port, tansu, "tansu")
        for run in range(1, a.runs + 1):
            topic = f"peers-{time.time_ns()}"
            create_topics(brokers, [topic], a.partitions)
            subprocess.run([str(BIN / "tributary-dev"), "produce", "--brokers", brokers, "--topic", topic,
                            "--series", str(a.series), "--points", str(a.records // a.series)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            total = a.records // a.series * a.series
            for name, peer in chosen:
                r = peer(brokers, topic, total, a.partitions)
                extra = f" (+ {r['ring_cpu']:.3f} CPU-s in the ring)" if "ring_cpu" in r else ""
                print(f"run {run}: {name}: {r['records']} records, {r['wall']:.3f} s wall, {r['cpu']:.3f} CPU-s{extra}",
                      flush=True)
                rows.setdefault(name, []).append(r)
                if "ring_cpu" in r:
                    rows.setdefault(name + ", counting the ring's CPU", []).append(
                        dict(r, cpu=r["cpu"] + r["ring_cpu"]))
    finally:
        tansu.terminate()
        tansu.wait(30)
    print(f"\n{a.records} records, {a.series} series, {a.partitions} partitions, tansu (memory), "
          f"medians of {a.runs} runs (min-max)\n")
    print("| peer | records/s wall | records per CPU-second |")
    print("|---|---:|---:|")
    per_cpu = {}
    for name, rs in rows.items():
        wall = [r["records"] / r["wall"] for r in rs]
        cpu = [r["records"] / r["cpu"] for r in rs]
        per_cpu[name] = statistics.median(cpu)
        print(f"| {name} | {statistics.median(wall):,.0f} ({min(wall):,.0f}-{max(wall):,.0f}) | "
              f"{statistics.median(cpu):,.0f} ({min(cpu):,.0f}-{max(cpu):,.0f}) |")
    first = next(iter(per_cpu))
    print()
    for name, v in per_cpu.items():
        if name != first:
            print(f"per CPU-second, {first} / {name}: {per_cpu[first] / v:.2f}x")


if __name__ == "__main__":
    main()
