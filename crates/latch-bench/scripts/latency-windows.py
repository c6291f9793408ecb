#!/usr/bin/env python3
"""Where a run's latency tail comes from, from a trace written by `latch-bench --latency-trace`.

    latency-windows.py TRACE [WINDOW_MS]

Cuts the run into windows of WINDOW_MS (10 unless given) by each request's send time and
prints: the run's mean, p50, p99 and p99.9; the spread of the windows' mean latencies (a
server that slows down for a stretch shows as slow windows, an unlucky request as a slow
request in an ordinary window); the share of the p99-and-slower requests sent in the slowest
tenth of the windows; how evenly those requests fall across the connections; and the
slowest windows with their start on CLOCK_MONOTONIC, to look up in a `perf record -k
CLOCK_MONOTONIC` of the same run (`perf sched timehist`, `perf script`).
"""
import collections
import re
import signal
import sys


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the output quietly
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    window_us = int(float(sys.argv[2]) * 1000) if len(sys.argv) == 3 else 10_000
    with open(sys.argv[1]) as f:
        header = f.readline()
        samples = [tuple(map(int, line.split())) for line in f if line.strip()]
    start = re.search(r"CLOCK_MONOTONIC ([\d.]+) s", header)
    if not samples or not start:
        sys.exit(f"{sys.argv[1]}: not a latch-bench latency trace, or an empty one")
    started = float(start.group(1))

    latencies = sorted(s[2] for s in samples)
    n = len(latencies)
    q = lambda sorted_values, p: sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]
    p99 = q(latencies, 0.99)
    print(
        f"{n} requests: mean {sum(latencies) / n / 1000:.2f} ms, p50 {q(latencies, 0.5) / 1000:.2f}, "
        f"p99 {p99 / 1000:.2f}, p99.9 {q(latencies, 0.999) / 1000:.2f}, max {latencies[-1] / 1000:.2f}"
    )

    windows = collections.defaultdict(list)
    for _, sent, latency in samples:
        windows[sent // window_us].append(latency)
    means = {w: sum(v) / len(v) for w, v in windows.items()}
    ordered = sorted(means.values())
    print(
        f"{len(windows)} windows of {window_us / 1000:g} ms, their mean latency: "
        + ", ".join(f"p{int(p * 100)} {q(ordered, p) / 1000:.2f}" for p in (0.1, 0.5, 0.9, 0.99))
        + f", max {ordered[-1] / 1000:.2f} ms"
    )
    slowest = sorted(means, key=means.get, reverse=True)
    tenth = set(slowest[: max(1, len(slowest) // 10)])
    tail = [s for s in samples if s[2] >= p99]
    in_slowest = sum(1 for s in tail if s[1] // window_us in tenth)
    print(
        f"requests at p99 or slower: {len(tail)}, {100 * in_slowest / len(tail):.0f}% of them "
        f"sent in the slowest tenth of the windows"
    )
    per_connection = collections.Counter(s[0] for s in tail)
    connections = {s[0] for s in samples}
    counts = [per_connection.get(c, 0) for c in connections]
    print(f"  per connection: {min(counts)} to {max(counts)} (of {len(connections)} connections)")
    print("slowest windows (start on CLOCK_MONOTONIC, mean latency, requests sent):")
    for w in slowest[:10]:
        at = started + w * window_us / 1e6
        print(f"  {at:.3f} s (+{w * window_us / 1000:g} ms)  {means[w] / 1000:6.2f} ms  {len(windows[w])}")


if __name__ == "__main__":
    main()
