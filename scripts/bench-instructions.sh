#!/usr/bin/env bash
# Instructions per accepted request, counted by valgrind's callgrind (user
# space, every thread: the request path, the journal, the sinks), for the
# receiver with the log and stats sinks (the archive off) in both journal
# modes and for the ceiling server. Unlike wall-clock
# rates these counts repeat from run to run on a noisy machine.
#
# Each server runs under callgrind; after a warm-up its counters are zeroed,
# REQUESTS callbacks are posted one after another on one keep-alive
# connection, the server is given a moment to let its sinks catch up, and the
# counters are dumped.
#
#   scripts/bench-instructions.sh              # 2000 requests per server
#   REQUESTS=500 scripts/bench-instructions.sh
#   RECEIVER=/tmp/old-receiver scripts/bench-instructions.sh   # another build, e.g. an older commit's
#   NO_BUILD=1 scripts/bench-instructions.sh   # what target/release holds, without building
#   KEEP=dir scripts/bench-instructions.sh     # keep the profiles; then, built with
#       CARGO_PROFILE_RELEASE_DEBUG=line-tables-only, scripts/instruction-stages.py dir/receiver-sync-os.out.1 2000
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-2000}
SAMPLE=${SAMPLE:-samples/text.json}
ADDR=127.0.0.1:18016
CALLBACK_PATH=/callbackExample/callbackAfterSendSingleMsgCommand

if ! command -v valgrind >/dev/null; then
    apt-get update -qq && apt-get install -y -qq valgrind
fi
# Two builds: an example brings the dev-dependencies' features (tokio's
# "process" and "test-util") into whatever is built with it; the receiver
# measured is the one a user builds, alone.
# NO_BUILD=1 measures what target/release holds (or RECEIVER) as it is.
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release --quiet --example ceiling
    if [ -z "${RECEIVER:-}" ]; then
        cargo build --release --quiet --bin openim-callback-receiver
    fi
fi
RECEIVER=${RECEIVER:-target/release/openim-callback-receiver}

work=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# post N: N callbacks on one keep-alive connection; fails unless every answer is 200.
post() {
    python3 - "$1" "$ADDR" "$CALLBACK_PATH" "$SAMPLE" <<'PY'
import http.client, sys
count, addr, path, sample = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
body = open(sample, "rb").read()
host, port = addr.split(":")
connection = http.client.HTTPConnection(host, int(port))
headers = {"Content-Type": "application/json; charset=utf-8", "operationID": "bench"}
for _ in range(count):
    connection.request("POST", path, body, headers)
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"answered {response.status}")
PY
}

# measure NAME COMMAND...: instructions per request for the server COMMAND starts.
measure() {
    local name=$1
    shift
    valgrind --tool=callgrind --callgrind-out-file="$work/$name.out" "$@" >"$work/$name.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 300); do
        curl -s -o /dev/null "http://$ADDR/healthz" -X POST && break
        sleep 0.2
    done
    post 200
    sleep 1
    callgrind_control --zero "$server_pid" >/dev/null
    post "$REQUESTS"
    sleep 1
    callgrind_control --dump="measured" "$server_pid" >/dev/null
    kill -TERM "$server_pid"
    wait "$server_pid" || true
    server_pid=
    local total
    total=$(cat "$work/$name".out.* 2>/dev/null | awk '/^summary:/ {s += $2} END {print s + 0}')
    printf '%-40s %10.0f instructions per request\n' "$name" "$(awk "BEGIN {print $total / $REQUESTS}")"
    echo "$total" >"$work/$name.total"
}

echo "Instructions per accepted request (callgrind, $REQUESTS sequential requests, body $SAMPLE)"
measure ceiling target/release/examples/ceiling "$ADDR"
for mode in os always; do
    (
        export OPENIM_CALLBACK__SERVER__LISTEN=$ADDR OPENIM_CALLBACK__TELEMETRY__FORMAT=json \
            OPENIM_CALLBACK__JOURNAL__DIR="$work/$mode/journal" OPENIM_CALLBACK__JOURNAL__SYNC=$mode \
            OPENIM_CALLBACK__STATS__SNAPSHOT_PATH="$work/$mode/stats.snapshot" \
            OPENIM_CALLBACK__SINKS__SQL__URL=""
        measure "receiver-sync-$mode" "$RECEIVER"
    )
done
ceiling=$(cat "$work/ceiling.total")
for mode in os always; do
    receiver=$(cat "$work/receiver-sync-$mode.total")
    echo "receiver (sync=$mode) / ceiling: $(awk "BEGIN {printf \"%.2f\", $receiver / $ceiling}")"
done
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work"/*.out* "$KEEP"/ && echo "callgrind files kept in $KEEP"; fi
