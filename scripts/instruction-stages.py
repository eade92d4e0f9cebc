#!/usr/bin/env python3
"""Where a request's instructions go, by stage, from a callgrind profile of the
receiver (scripts/bench-instructions.sh with KEEP=dir; build with
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only for the names to be there).

    scripts/instruction-stages.py DIR/receiver-sync-os.out.1 REQUESTS

Each stage is the inclusive cost of the function that is its entry point
(the largest figure callgrind_annotate gives for a name matching it: inlined
copies of one function show under several files), divided by the requests;
the HTTP stage and the runners' are what is left of their threads once the
stages inside them are taken out.
"""

import re
import subprocess
import sys

ENTRY_POINTS = {
    "total": r"PROGRAM TOTALS",
    "workers": r"tokio::runtime::blocking::pool::Inner::run$",
    "handler": r"<F as axum::handler::Handler<\(M(,T\d+)+\),S>>::call::\{\{closure\}\}$",
    "parse": r"openim_callback_receiver::callbacks::\w+::parse$",
    "enqueue": r"Journal<M>>::enqueue$",
    "write": r"Journal<M>>::write_queued$",
    "sync": r"src/journal/mod.rs:std::sys::backtrace::__rust_begin_short_backtrace$|Journal<M>::sync_loop$",
    "sinks": r"src/sinks/mod.rs:std::sys::backtrace::__rust_begin_short_backtrace$",
    "log": r"LogSink as openim_callback_receiver::sinks::Sink>::deliver::\{\{closure\}\}$",
    "stats": r"StatsSink as openim_callback_receiver::sinks::Sink>::deliver::\{\{closure\}\}$",
    "histograms": r"prometheus_client::metrics::histogram::Histogram::observe_and_bucket$",
}


def inclusive_costs(profile):
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", profile],
        capture_output=True, text=True, check=True,
    ).stdout
    costs = dict.fromkeys(ENTRY_POINTS, 0)
    line_re = re.compile(r"^\s*([\d,]+)\s+\([\s\d.]+%\)\s+(?![=>*])(.*?)(?:\s+\[.*\])?$")
    for line in annotated.splitlines():
        match = line_re.match(line)
        if not match:
            continue
        cost, name = int(match.group(1).replace(",", "")), match.group(2)
        for stage, pattern in ENTRY_POINTS.items():
            if re.search(pattern, name):
                costs[stage] = max(costs[stage], cost)
    return costs


def main():
    profile, requests = sys.argv[1], int(sys.argv[2])
    c = {stage: cost / requests for stage, cost in inclusive_costs(profile).items()}
    journal = c["enqueue"] + c["write"]
    rows = [
        ("HTTP: hyper, axum, tower layers, tokio's worker threads", c["workers"] - c["handler"]),
        ("handler: extractors, body, checks, counters, the answer", c["handler"] - c["parse"] - journal),
        ("parse the packet (the fast path, serde_json for the rest)", c["parse"]),
        ("journal: queue and write the record (request path)", journal),
        ("journal: sync thread (fdatasync, spares)", c["sync"]),
        ("log sink: format and write the record", c["log"]),
        ("stats sink: count the message", c["stats"]),
        ("sink runners: read the journal, wake, wait, save positions", c["sinks"] - c["log"] - c["stats"]),
        ("other threads (main, signals)", c["total"] - c["workers"] - c["sinks"] - c["sync"]),
    ]
    print("| stage | instructions per request |")
    print("| --- | ---: |")
    for name, cost in rows:
        print(f"| {name} | {cost:,.0f} |")
    print(f"| **total** | **{c['total']:,.0f}** |")
    print(f"\nof which prometheus histograms (request duration, sink latency, fsync): {c['histograms']:,.0f}")


if __name__ == "__main__":
    main()
