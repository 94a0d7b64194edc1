#!/usr/bin/env python3
"""Tributary and its peers on the same broker and input, in one run:
`python3 apps/devkit/peers/peers.py [--records N] [--series S] [--partitions P] [--runs R]`.

Starts tansu (in memory), produces the same JSON records once per run, and times
Tributary's rollup + CUSUM (`tributary-rollup`, CPU summed over its threads from
/proc/PID/task/*/schedstat, ns) and Quix Streams (quix_rollup.py, getrusage) over the
records each counts after its first one. Prints each figure's median, min and max, and
the ratio per CPU-second. Needs `pip install quixstreams` and a release build
(BIN=dir of the binaries, default ~/.cache/tributary/target/release).
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
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


def metric(admin, name):
    try:
        body = urllib.request.urlopen(f"http://{admin}/metrics", timeout=2).read().decode()
    except OSError:
        return 0
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0


def tributary(brokers, topic, records, partitions):
    admin = f"127.0.0.1:{free_port()}"
    out = f"tributary-rollups-{time.time_ns()}"
    create_topics(brokers, [out], partitions)
    env = dict(os.environ, RUST_LOG="warn", TRIBUTARY_CUSUM_ENABLED="true")
    args = [str(BIN / "tributary-rollup"), "--brokers", brokers, "--input-topic", topic,
            "--output-topic", out, "--group", f"tributary-peer-{time.time_ns()}",
            "--admin-listen", admin]
    with tempfile.TemporaryDirectory() as state:
        env["TRIBUTARY_STATE_DIR"] = state
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            first = None
            deadline = time.time() + 300
            while time.time() < deadline:
                n = metric(admin, "tributary_records_consumed_total")
                if first is None and n > 0:
                    first = (time.perf_counter(), task_cpu(proc.pid), n)
                if n >= records:
                    t1, c1 = time.perf_counter(), task_cpu(proc.pid)
                    break
                time.sleep(0.005)
            else:
                sys.exit("tributary-rollup did not consume every record within 300 s")
        finally:
            proc.terminate()
            proc.wait(60)
    t0, c0, n0 = first
    return {"records": records - n0, "wall": t1 - t0, "cpu": c1 - c0}


def quix(brokers, topic, records, partitions):
    out = f"quix-rollups-{time.time_ns()}"
    create_topics(brokers, [out], partitions)
    done = subprocess.run([sys.executable, str(HERE / "quix_rollup.py"), brokers, topic, out, str(records)],
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        sys.exit(f"quix_rollup.py failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--series", type=int, default=1_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
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
            for name, peer in (("Tributary rollup + CUSUM", tributary), ("Quix Streams 5m/1h/1d", quix)):
                r = peer(brokers, topic, total, a.partitions)
                print(f"run {run}: {name}: {r['records']} records, {r['wall']:.3f} s wall, {r['cpu']:.3f} CPU-s",
                      flush=True)
                rows.setdefault(name, []).append(r)
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
    names = list(per_cpu)
    if len(names) == 2:
        print(f"\nratio per CPU-second, {names[0]} / {names[1]}: {per_cpu[names[0]] / per_cpu[names[1]]:.1f}x")


if __name__ == "__main__":
    main()
