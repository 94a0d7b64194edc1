"""The Quix Streams peer of `peers.py`: tumbling 5m/1h/1d windows per series with
min/max/mean/count, 60 s grace, changelog topics off, closed windows produced to a topic.

Usage: quix_rollup.py BROKERS INPUT_TOPIC OUTPUT_TOPIC RECORDS
Prints one JSON line: the records counted after the first one, and the wall and CPU
seconds (getrusage, every thread of this process) they took.
"""

import json
import resource
import sys
import time
from datetime import timedelta

from quixstreams import Application
from quixstreams.dataframe.windows import Count, Max, Mean, Min


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    brokers, source, sink, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    app = Application(
        broker_address=brokers,
        consumer_group=f"quix-peer-{time.time_ns()}",
        auto_offset_reset="earliest",
        use_changelog_topics=False,
        state_dir=f"/tmp/quix-peer-state-{time.time_ns()}",
        loglevel="WARNING",
    )
    # The event time is the record's own `ts` (ms), as Tributary reads it.
    topic = app.topic(
        source,
        value_deserializer="json",
        timestamp_extractor=lambda value, headers, ts, kind: int(value["ts"]),
    )
    out = app.topic(sink, value_serializer="json")
    sdf = app.dataframe(topic)
    seen = {"n": 0, "first": None}

    def count(_value):
        seen["n"] += 1
        if seen["first"] is None:
            seen["first"] = (time.perf_counter(), cpu(), seen["n"])
        if seen["n"] >= total:
            seen["last"] = (time.perf_counter(), cpu())
            app.stop()

    sdf = sdf.update(count)
    for width in (timedelta(minutes=5), timedelta(hours=1), timedelta(days=1)):
        windows = (
            sdf.tumbling_window(width, grace_ms=timedelta(seconds=60))
            .agg(min=Min("value"), max=Max("value"), mean=Mean("value"), count=Count())
            .final()
        )
        windows.to_topic(out)
    app.run()
    (t0, c0, n0), (t1, c1) = seen["first"], seen["last"]
    print(json.dumps({"records": seen["n"] - n0, "wall": t1 - t0, "cpu": c1 - c0}))


if __name__ == "__main__":
    main()
