#!/usr/bin/env bash
# What one request costs the kernel and the scheduler: system calls per
# request (perf's syscall tracepoints) and, for each thread of the receiver,
# its context switches per request and its CPU time, under wrk. Log and stats
# sinks, the archive off, journal.sync = "os", body samples/text.json.
#
#   scripts/bench-syscalls.sh                      # this checkout's release build, 64 connections
#   CONNECTIONS=2 scripts/bench-syscalls.sh
#   scripts/bench-syscalls.sh /tmp/old-receiver    # another build
#
# Records per pwritev is 1 / (pwritev per request): how often concurrent
# requests shared a journal write.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C # sort and join agree on the order of thread ids
RECEIVER=${1:-target/release/openim-callback-receiver}
CONNECTIONS=${CONNECTIONS:-64} DURATION=${DURATION:-4}
ADDR=127.0.0.1:18403
URL=http://$ADDR/callbackExample/callbackAfterSendSingleMsgCommand
export UNIQUE_IDS=1 SAMPLE=${SAMPLE:-samples/text.json}
if ! command -v wrk >/dev/null || ! command -v perf >/dev/null; then
    apt-get update -qq && apt-get install -y -qq wrk linux-perf
fi
# perf finds the syscall tracepoints under tracefs.
if [ ! -e /sys/kernel/tracing/events/syscalls ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi
if [ "$RECEIVER" = target/release/openim-callback-receiver ]; then
    cargo build --release --quiet --bin openim-callback-receiver
fi
work=$(mktemp -d) pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
OPENIM_CALLBACK__SERVER__LISTEN=$ADDR OPENIM_CALLBACK__TELEMETRY__FORMAT=json \
    OPENIM_CALLBACK__SINKS__SQL__URL="" OPENIM_CALLBACK__STATS__SNAPSHOT_PATH="$work/stats.snapshot" \
    OPENIM_CALLBACK__JOURNAL__DIR="$work/journal" "$RECEIVER" >"$work/receiver.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    curl -s -o /dev/null "http://$ADDR/healthz" && break
    sleep 0.1
done
wrk -t1 -c"$CONNECTIONS" -d1s -s scripts/post-sample.lua "$URL" >/dev/null # warm-up

# One line per thread: name, voluntary + involuntary switches, utime + stime (clock ticks).
threads() {
    for task in /proc/"$pid"/task/*; do
        # A thread that ends meanwhile is left out.
        read -r _ comm _ < <(tr -d '()' <"$task/stat" 2>/dev/null) || continue
        switches=$(awk '/ctxt_switches/ {s += $2} END {print s}' "$task/status" 2>/dev/null) || continue
        ticks=$(awk '{print $14 + $15}' "$task/stat" 2>/dev/null) || continue
        echo "${task##*/} $comm $switches $ticks"
    done | sort
}
events=$(printf 'syscalls:sys_enter_%s,' pwritev write writev recvfrom sendto read epoll_wait futex fdatasync)
threads >"$work/before"
perf stat -p "$pid" -e "${events%,}" -x, -o "$work/perf.csv" -- sleep "$DURATION" &
perf_pid=$!
wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s scripts/post-sample.lua "$URL" >"$work/wrk.txt"
wait "$perf_pid"
threads >"$work/after"
requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
tick_us=$(awk "BEGIN {print 1000000 / $(getconf CLK_TCK)}")
echo "$RECEIVER, $CONNECTIONS connections, ${DURATION}s: $requests requests ($(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")/s)"
echo "system calls per request:"
awk -F, -v requests="$requests" '$3 ~ /sys_enter_/ {sub(/.*sys_enter_/, "", $3); printf "  %-12s %6.3f\n", $3, $1 / requests}' "$work/perf.csv"
echo "per thread: context switches per request, CPU us per request:"
join "$work/before" "$work/after" |
    awk -v requests="$requests" -v tick_us="$tick_us" '{printf "  %-18s %6.4f %7.2f\n", $2, ($6 - $3) / requests, ($7 - $4) * tick_us / requests}'
