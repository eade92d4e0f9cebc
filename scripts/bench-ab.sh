#!/usr/bin/env bash
# Two receiver builds side by side under the same load: each round runs wrk
# against one, then the other, alternating which goes first (the one run
# second measured 0.3-0.8 us a request slower on this machine, whichever
# build it was), and reports requests/s and the receiver's CPU time per
# request (utime + stime from /proc/<pid>/stat over the run) and wrk's own
# (what the client spends on each request, on the same cores), per round and
# on average, and B's requests/s over A's. Log and stats sinks, the archive
# off, journal.sync = "os".
#
#   scripts/bench-ab.sh /tmp/before target/release/openim-callback-receiver   # an older build (copied there) against this one
#   ROUNDS=8 CONNECTIONS=2 DURATION=4 scripts/bench-ab.sh A B
#   A_ENV="OPENIM_CALLBACK__SERVER__WORKER_THREADS=1" scripts/bench-ab.sh B B   # one build, two settings
#   scripts/bench-ab.sh ceiling target/release/openim-callback-receiver   # the receiver against the ceiling (examples/ceiling.rs), alternated
# This checkout's receiver is built first (target/release/openim-callback-receiver), and the
# ceiling where a side is named `ceiling`.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1 B=$2
ROUNDS=${ROUNDS:-6} CONNECTIONS=${CONNECTIONS:-64} DURATION=${DURATION:-4}
CALLBACK_PATH=/callbackExample/callbackAfterSendSingleMsgCommand
export UNIQUE_IDS=1 SAMPLE=${SAMPLE:-samples/text.json}
if ! command -v wrk >/dev/null; then
    apt-get update -qq && apt-get install -y -qq wrk
fi
cargo build --release --quiet --bin openim-callback-receiver
if [ "$A" = ceiling ] || [ "$B" = ceiling ]; then
    cargo build --release --quiet --example ceiling
fi
work=$(mktemp -d)
declare -A PID PORT=([A]=18401 [B]=18402)
cleanup() {
    kill "${PID[@]}" 2>/dev/null || true
    # Each receiver writes its journal and snapshot as it stops: gone first, then its files.
    wait "${PID[@]}" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

for side in A B; do
    extra_env=${side}_ENV
    mkdir -p "$work/$side"
    # The ceiling takes its address as an argument and ignores the receiver's settings.
    server=("${!side}")
    if [ "${!side}" = ceiling ]; then
        server=(target/release/examples/ceiling "127.0.0.1:${PORT[$side]}")
    fi
    # shellcheck disable=SC2086 # A_ENV and B_ENV are lists of NAME=value words
    env ${!extra_env:-} OPENIM_CALLBACK__SERVER__LISTEN=127.0.0.1:${PORT[$side]} \
        OPENIM_CALLBACK__TELEMETRY__FORMAT=json OPENIM_CALLBACK__SINKS__SQL__URL="" \
        OPENIM_CALLBACK__STATS__SNAPSHOT_PATH="$work/$side/stats.snapshot" \
        OPENIM_CALLBACK__JOURNAL__DIR="$work/$side/journal" "${server[@]}" >"$work/$side.log" 2>&1 &
    PID[$side]=$!
done
for side in A B; do
    for _ in $(seq 100); do
        curl -s -o /dev/null -X POST "http://127.0.0.1:${PORT[$side]}$CALLBACK_PATH" && break
        sleep 0.1
    done
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# measure SIDE: a 1-second warm-up, then the run; prints "SIDE requests/s us/request
# wrk-us/request" (wrk's user + system time, from bash's time).
measure() {
    local side=$1 url="http://127.0.0.1:${PORT[$1]}$CALLBACK_PATH" before after TIMEFORMAT='%U %S'
    wrk -t1 -c"$CONNECTIONS" -d1s -s scripts/post-sample.lua "$url" >/dev/null
    before=$(cpu_ticks "${PID[$side]}")
    { time wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s scripts/post-sample.lua "$url" \
        >"$work/wrk.out"; } 2>"$work/wrk.time"
    after=$(cpu_ticks "${PID[$side]}")
    awk -v side="$side" -v ticks=$((after - before)) -v hz="$(getconf CLK_TCK)" -v wrk_cpu="$(cat "$work/wrk.time")" '
        /requests in/ {n = $1} /^Requests\/sec/ {rps = $2}
        END {split(wrk_cpu, t, " "); printf "%s %.0f %.2f %.2f\n", side, rps, ticks * 1e6 / hz / n, (t[1] + t[2]) * 1e6 / n}' \
        "$work/wrk.out"
}
echo "$CONNECTIONS connections, ${DURATION} s a run, $ROUNDS rounds; A = $A ${A_ENV:-}; B = $B ${B_ENV:-}"
for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then measure A; measure B; else measure B; measure A; fi
done | tee "$work/rounds"
awk '{n[$1]++; rps[$1] += $2; us[$1] += $3; wrk[$1] += $4}
    END {for (side in n) printf "%s: %.0f requests/s, %.2f us of CPU a request, wrk %.2f us a request (mean of %d)\n",
        side, rps[side] / n[side], us[side] / n[side], wrk[side] / n[side], n[side]}' "$work/rounds" | sort
awk '{rps[$1] += $2} END {printf "B / A requests/s: %.3f\n", rps["B"] / rps["A"]}' "$work/rounds"
