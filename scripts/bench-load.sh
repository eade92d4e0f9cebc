#!/usr/bin/env bash
# End-to-end load benchmark: the receiver (log and stats sinks, log records
# written to a file as a container runtime would) against the ceiling server
# (examples/ceiling.rs: axum, reads the body, answers the envelope), measured
# in the same run with wrk at 2 connections (OpenIM's two webhook workers) and
# at 64. Prints requests/s, p50 and p99 for both, the ratios, the receiver's
# peak RSS, the log sink's own write rate, and checks that the log file holds
# one record for every 200 answered.
#
#   scripts/bench-load.sh                      # 3 rounds of 10 s per server and load
#   ROUNDS=1 DURATION=5s scripts/bench-load.sh # quicker, noisier
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
SAMPLE=${SAMPLE:-samples/text.json}
RECEIVER_ADDR=127.0.0.1:18006
CEILING_ADDR=127.0.0.1:18007
CALLBACK_PATH=/callbackExample/callbackAfterSendSingleMsgCommand
export SAMPLE

if ! command -v wrk >/dev/null; then
    apt-get update -qq && apt-get install -y -qq wrk
fi
cargo build --release --quiet --bin openim-callback-receiver --example ceiling --example log_sink_rate

work=$(mktemp -d)
cleanup() {
    kill "${receiver_pid:-}" "${ceiling_pid:-}" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

OPENIM_CALLBACK__SERVER__LISTEN=$RECEIVER_ADDR OPENIM_CALLBACK__TELEMETRY__FORMAT=json \
    OPENIM_CALLBACK__STATS__SNAPSHOT_PATH="$work/stats.snapshot" \
    target/release/openim-callback-receiver >"$work/receiver.log" 2>&1 &
receiver_pid=$!
target/release/examples/ceiling $CEILING_ADDR 2>/dev/null &
ceiling_pid=$!
for addr in $RECEIVER_ADDR $CEILING_ADDR; do
    for _ in $(seq 100); do
        curl -s -o /dev/null -X POST "http://$addr$CALLBACK_PATH" && break
        sleep 0.1
    done
done

# wrk's latency in microseconds, from "50%  44.00us" style lines.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "ms") n *= 1000; else if (u == "s") n *= 1000000
        printf "%.0f", n }'
}

# run SERVER CONNECTIONS: one wrk run; appends "rps p50 p99 ok" to $work/SERVER-CONNECTIONS.
run() {
    local server=$1 connections=$2 addr
    addr=$([ "$server" = receiver ] && echo $RECEIVER_ADDR || echo $CEILING_ADDR)
    wrk -t1 -c"$connections" -d"$DURATION" --latency -s scripts/post-sample.lua \
        "http://$addr$CALLBACK_PATH" >"$work/wrk.out"
    local rps p50 p99 total bad
    rps=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk.out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$work/wrk.out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$work/wrk.out")")
    total=$(awk '/requests in/ {print $1}' "$work/wrk.out")
    bad=$(awk '/Non-2xx/ {print $NF}' "$work/wrk.out")
    echo "$rps $p50 $p99 $((total - ${bad:-0}))" >>"$work/$server-$connections"
}

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

for connections in 2 64; do
    # Warm both servers up at this load before measuring.
    DURATION=2s run ceiling "$connections"; DURATION=2s run receiver "$connections"
    : >"$work/ceiling-$connections"; : >"$work/receiver-$connections"
    for _ in $(seq "$ROUNDS"); do
        run ceiling "$connections"
        run receiver "$connections"
    done
done

accepted=$(curl -s "http://$RECEIVER_ADDR/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["requests"]["accepted"])')
peak_rss_kib=$(awk '/^VmHWM/ {print $2}' "/proc/$receiver_pid/status")
kill -TERM "$receiver_pid"
wait "$receiver_pid" || { echo "receiver exited non-zero"; exit 1; }
records=$(grep -c '"target":"message"' "$work/receiver.log" || true)
log_rate=$(target/release/examples/log_sink_rate "$work/log-sink-alone.log")

echo
echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr)"
echo "wrk: 1 thread, $DURATION per run, median of $ROUNDS rounds, body $SAMPLE"
printf '\n%-6s %-9s %12s %10s %10s\n' conns server "requests/s" "p50 (us)" "p99 (us)"
declare -A result
for connections in 2 64; do
    for server in ceiling receiver; do
        f="$work/$server-$connections"
        rps=$(cut -d' ' -f1 "$f" | median); p50=$(cut -d' ' -f2 "$f" | median); p99=$(cut -d' ' -f3 "$f" | median)
        result[$server-$connections]="$rps $p50 $p99"
        printf '%-6s %-9s %12.0f %10s %10s\n' "$connections" "$server" "$rps" "$p50" "$p99"
    done
done
wrk_ok=$(cat "$work"/receiver-* | awk '{s += $4} END {print s}')

verdict() { if awk "BEGIN {exit !($1)}"; then echo PASS; else echo FAIL; fi; }
read -r c2_rps _ _ <<<"${result[ceiling-2]}"; read -r r2_rps _ _ <<<"${result[receiver-2]}"
read -r c64_rps _ c64_p99 <<<"${result[ceiling-64]}"; read -r r64_rps _ r64_p99 <<<"${result[receiver-64]}"
ratio2=$(awk "BEGIN {printf \"%.2f\", $r2_rps / $c2_rps}")
ratio64=$(awk "BEGIN {printf \"%.2f\", $r64_rps / $c64_rps}")
p99_ratio=$(awk "BEGIN {printf \"%.2f\", $r64_p99 / $c64_p99}")
log_ratio=$(awk "BEGIN {printf \"%.1f\", $log_rate / $r64_rps}")
echo
echo "receiver/ceiling requests/s at 2 connections:  $ratio2  (target >= 0.90) $(verdict "$ratio2 >= 0.90")"
echo "receiver/ceiling requests/s at 64 connections: $ratio64  (target >= 0.85) $(verdict "$ratio64 >= 0.85")"
echo "receiver/ceiling p99 at 64 connections:        $p99_ratio  (target <= 2.00) $(verdict "$p99_ratio <= 2.0")"
echo "receiver peak RSS:                             $((peak_rss_kib / 1024)) MiB (target <= 32) $(verdict "$peak_rss_kib <= 32768")"
echo "log sink alone:                                $log_rate records/s = ${log_ratio}x the 64-connection rate (target >= 3) $(verdict "$log_ratio >= 3")"
echo "log records: $records; answered 200 (receiver's count): $accepted; 200s seen by wrk: $wrk_ok $(verdict "$records == $accepted && $records >= $wrk_ok")"
