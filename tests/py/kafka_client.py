#!/usr/bin/env python3
"""Independent Kafka client for Tributary's end-to-end tests (confluent-kafka, which
bundles its own librdkafka 2.x, so it shares no code with the apps under test).

  kafka_client.py produce BROKERS TOPIC < records.jsonl
      each line: {"key": str|null, "value": str|null, "partition": int (optional),
                  "timestamp": ms (optional, the record's CreateTime)};
      a key or value "b64:..." is sent as the base64-decoded bytes (e.g. invalid UTF-8)
  kafka_client.py consume BROKERS TOPIC MIN_COUNT TIMEOUT_S [IDLE_S]
      prints one JSON line per record: key, value, partition, offset, headers
  kafka_client.py committed BROKERS GROUP TOPIC
      prints {"partition": committed offset} and {"end": {...}} as JSON
"""
import base64
import json
import os
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition


def settings(brokers, **extra):
    """librdkafka settings: the brokers, the environment's KAFKA_CLIENT_CONFIG (a JSON
    object, e.g. SASL_SSL for a secured broker), then `extra`."""
    conf = {"bootstrap.servers": brokers}
    conf.update(json.loads(os.environ.get("KAFKA_CLIENT_CONFIG") or "{}"))
    conf.update(extra)
    return conf


def as_bytes(text):
    if text is None:
        return None
    if text.startswith("b64:"):
        return base64.b64decode(text[4:])
    return text.encode()


def produce(brokers, topic):
    p = Producer(settings(brokers, **{"enable.idempotence": True, "linger.ms": 5}))
    errors = []
    count = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        r = json.loads(line)
        kwargs = {}
        if r.get("partition") is not None:
            kwargs["partition"] = r["partition"]
        if r.get("timestamp") is not None:
            kwargs["timestamp"] = r["timestamp"]
        if r.get("headers"):
            kwargs["headers"] = [(k, as_bytes(v)) for k, v in r["headers"]]
        key = as_bytes(r.get("key"))
        value = as_bytes(r.get("value"))
        while True:
            try:
                p.produce(topic, key=key, value=value,
                          on_delivery=lambda err, msg: err and errors.append(str(err)), **kwargs)
                break
            except BufferError:
                p.poll(0.05)
        count += 1
    p.flush(60)
    if errors:
        sys.exit(f"delivery failed: {errors[:3]}")
    print(json.dumps({"produced": count}))


def consume(brokers, topic, min_count, timeout, idle):
    c = Consumer(settings(brokers, **{"group.id": f"e2e-reader-{time.time()}",
                                      "enable.auto.commit": False, "auto.offset.reset": "earliest"}))
    deadline = time.time() + timeout
    # The app under test creates its output topics as it starts, and may start after the
    # reader: an absent topic is asked for again rather than read as empty.
    parts = []
    while not parts and time.time() < deadline:
        md = c.list_topics(topic, timeout=10)
        meta = md.topics.get(topic)
        parts = sorted(meta.partitions) if meta is not None and meta.error is None else []
        if not parts:
            time.sleep(0.5)
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    seen = 0
    last = time.time()
    while time.time() < deadline:
        m = c.poll(0.2)
        if m is None:
            if seen >= min_count and time.time() - last > idle:
                break
            continue
        if m.error():
            continue
        last = time.time()
        seen += 1
        headers = {k: (v.decode(errors="replace") if v is not None else None) for k, v in (m.headers() or [])}
        print(json.dumps({
            "key": None if m.key() is None else m.key().decode(errors="replace"),
            "value": None if m.value() is None else m.value().decode(errors="replace"),
            "partition": m.partition(), "offset": m.offset(), "headers": headers,
        }), flush=True)
    c.close()


def commit(brokers, group, topic, partition, offset, metadata):
    """Commits one offset with commit metadata for `group`, as another build of the app
    would (the group must have no active members)."""
    c = Consumer(settings(brokers, **{"group.id": group, "enable.auto.commit": False}))
    tp = TopicPartition(topic, int(partition), int(offset), metadata=metadata)
    c.commit(offsets=[tp], asynchronous=False)
    c.close()


def committed(brokers, group, topic):
    c = Consumer(settings(brokers, **{"group.id": group, "enable.auto.commit": False}))
    md = c.list_topics(topic, timeout=10)
    parts = [TopicPartition(topic, p) for p in sorted(md.topics[topic].partitions)]
    out = {"committed": {}, "end": {}}
    for tp in c.committed(parts, timeout=10):
        out["committed"][str(tp.partition)] = tp.offset
    for tp in parts:
        lo, hi = c.get_watermark_offsets(tp, timeout=10)
        out["end"][str(tp.partition)] = hi
    c.close()
    print(json.dumps(out))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "produce":
        produce(sys.argv[2], sys.argv[3])
    elif cmd == "consume":
        idle = float(sys.argv[6]) if len(sys.argv) > 6 else 3.0
        consume(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), idle)
    elif cmd == "commit":
        commit(*sys.argv[2:8])
    elif cmd == "committed":
        committed(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(f"unknown command {cmd}")
