#!/usr/bin/env python3
"""bench/slow_streams.py: many concurrent slow SSE streams through a gateway.

Opens --streams connections at once to http://--host:--port--path, each sending the JSON
body of --body with --header lines (e.g. `x-fake-chunks: 40`, `x-fake-chunk-delay-ms: 50`),
reads every answer to its end (HTTP/1.1, `Connection: close`, chunked bodies decoded),
counts its `data:` events and checks the stream ended with `data: [DONE]` and, when
--expect-events is given, that it carried exactly that many events. Prints one JSON object:

  {"streams": N, "complete": N, "status": {"200": N}, "events_expected": E,
   "events_min": E, "events_max": E, "peak_concurrent": N, "wall_s": …, "p50_s": …,
   "p99_s": …, "max_s": …, "errors": [first few]}

Python's standard library only (asyncio), so it needs no package index. Exit status 0 when
every stream completed, 1 otherwise.
"""

import argparse
import asyncio
import json
import sys
import time


def decode_chunked(data):
    """The payload of a chunked body; raises ValueError when it is cut short."""
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise ValueError("chunk size line cut short")
        size = int(data[pos:eol].split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            return bytes(out)
        if pos + size + 2 > len(data):
            raise ValueError("chunk cut short")
        out += data[pos : pos + size]
        pos += size + 2


class Tally:
    def __init__(self):
        self.active = 0
        self.peak = 0


async def one_stream(args, request, tally, timeout):
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(args.host, args.port), timeout
        )
    except Exception as e:  # noqa: BLE001 - every failure is reported, none is fatal
        return {"ok": False, "error": f"connect: {e!r}"}
    tally.active += 1
    tally.peak = max(tally.peak, tally.active)
    try:
        writer.write(request)
        await writer.drain()
        buf = bytearray()
        deadline = started + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no end of stream within {timeout} s")
            chunk = await asyncio.wait_for(reader.read(65536), left)
            if not chunk:
                break
            buf += chunk
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "error": f"read: {e!r}"}
    finally:
        tally.active -= 1
        writer.close()
    elapsed = time.monotonic() - started
    head, sep, body = bytes(buf).partition(b"\r\n\r\n")
    if not sep:
        return {"ok": False, "error": "no complete response head"}
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if headers.get(b"transfer-encoding") == b"chunked":
        try:
            body = decode_chunked(body)
        except ValueError as e:
            return {"ok": False, "status": status, "error": f"body: {e}"}
    events = sum(1 for line in body.split(b"\n") if line.startswith(b"data:"))
    done = b"data: [DONE]" in body
    ok = status == 200 and done
    if args.expect_events is not None and events != args.expect_events:
        ok = False
    return {"ok": ok, "status": status, "events": events, "done": done, "elapsed": elapsed}


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[i]


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/v1/chat/completions")
    ap.add_argument("--key", default="")
    ap.add_argument("--body", required=True, help="file with the JSON request body")
    ap.add_argument("--header", action="append", default=[], help="extra 'Name: value'")
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--expect-events", type=int)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per stream")
    args = ap.parse_args()

    with open(args.body, "rb") as f:
        body = f.read()
    head = [
        f"POST {args.path} HTTP/1.1",
        f"Host: {args.host}:{args.port}",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if args.key:
        head.append(f"Authorization: Bearer {args.key}")
    head += args.header
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body

    tally = Tally()
    started = time.monotonic()
    results = await asyncio.gather(
        *(one_stream(args, request, tally, args.timeout) for _ in range(args.streams))
    )
    wall = time.monotonic() - started

    status = {}
    for r in results:
        key = str(r.get("status", "none"))
        status[key] = status.get(key, 0) + 1
    events = [r["events"] for r in results if "events" in r]
    elapsed = sorted(r["elapsed"] for r in results if "elapsed" in r)
    errors = [r.get("error") or f"status {r.get('status')}, {r.get('events')} events, done={r.get('done')}"
              for r in results if not r["ok"]]
    complete = sum(1 for r in results if r["ok"])
    report = {
        "streams": args.streams,
        "complete": complete,
        "status": status,
        "events_expected": args.expect_events,
        "events_min": min(events) if events else None,
        "events_max": max(events) if events else None,
        "peak_concurrent": tally.peak,
        "wall_s": round(wall, 3),
        "p50_s": round(percentile(elapsed, 50), 3) if elapsed else None,
        "p99_s": round(percentile(elapsed, 99), 3) if elapsed else None,
        "max_s": round(elapsed[-1], 3) if elapsed else None,
        "errors": errors[:5],
        "error_count": len(errors),
    }
    print(json.dumps(report))
    return 0 if complete == args.streams else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
