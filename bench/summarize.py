#!/usr/bin/env python3
"""Medians (and min-max) of bench/compare.sh's JSON lines, per workload and label.

    bench/summarize.py < results.jsonl
"""
import json
import statistics
import sys
from collections import defaultdict

FIELDS = [
    "deliveries_per_sec",
    "deliveries_per_server_cpu_sec",
    "round_trips_per_sec",
    "round_trips_per_server_cpu_sec",
    "latency_p50_ms",
    "latency_p99_ms",
    "server_cpu_cores",
    "undelivered_fraction",
    "errors",
    "unavailable",
    "sockets",
    "joins_per_sec",
    "server_cpu_us_per_join",
    "rss_kib_per_socket",
    "rss_kib_per_socket_after_hold",
]

runs = defaultdict(list)
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    workload, label, _ = r["tag"].split("/")
    runs[(workload, label)].append(r)

for (workload, label), rs in sorted(runs.items()):
    print(f"{workload} [{label}] ({len(rs)} runs)")
    for f in FIELDS:
        values = [r[f] for r in rs if isinstance(r.get(f), (int, float))]
        if not values:
            continue
        med = statistics.median(values)
        print(f"  {f}: {med:.4g} ({min(values):.4g}-{max(values):.4g})")
