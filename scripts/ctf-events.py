#!/usr/bin/python3
"""Print the events of a CTF trace as JSON lines, decoded by babeltrace2's
Python bindings (python3-bt2): an independent reader for hvtrace's tests.

Each line: {"ts": clock cycles, "name": ..., "stream": stream class id,
"cpu": packet cpu_id, "ctx": {common context fields}, "f": {payload fields}}
or, for a gap the producer reported, {"discarded": count, "cpu": ...}.
Usage: /usr/bin/python3 scripts/ctf-events.py TRACE_DIR
"""
import json
import sys

import bt2


def value(f):
    if isinstance(f, bt2._StringFieldConst):
        return str(f)
    if isinstance(f, bt2._ArrayFieldConst):
        return [value(x) for x in f]
    if isinstance(f, bt2._StructureFieldConst):
        return {k: value(v) for k, v in f.items()}
    if isinstance(f, bt2._EnumerationFieldConst):
        return int(f)
    if isinstance(f, (bt2._IntegerFieldConst,)):
        return int(f)
    return str(f)


def main(path):
    out = sys.stdout
    for msg in bt2.TraceCollectionMessageIterator(path):
        if type(msg) is bt2._EventMessageConst:
            ev = msg.event
            pkt = ev.packet
            rec = {
                "ts": msg.default_clock_snapshot.value,
                "name": ev.name,
                "stream": ev.stream.cls.id,
                "cpu": int(pkt.context_field["cpu_id"]) if pkt is not None else None,
                "ctx": value(ev.common_context_field) if ev.common_context_field is not None else {},
                "f": value(ev.payload_field) if ev.payload_field is not None else {},
            }
        elif type(msg) is bt2._DiscardedEventsMessageConst:
            rec = {"discarded": msg.count, "stream": msg.stream.cls.id,
                   "cpu": int(msg.stream.id) if msg.stream.id is not None else None}
        else:
            continue
        out.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
