#!/usr/bin/env bash
# End-to-end load benchmark: the receiver (journal, log and stats sinks, log
# records written to a file as a container runtime would) in both journal
# modes (journal.sync = "os" and "always") against the ceiling server
# (examples/ceiling.rs: axum, reads the body, answers the envelope), measured
# in the same run with wrk at 2 connections (OpenIM's two webhook workers) and
# at 64 (those three with the archive off: log and stats only); the "os"
# receiver once more with the SQL archive on (as by default: the embedded
# SQLite; ARCHIVE_URL=postgres://… for PostgreSQL), and once more with fleet statistics in Redis (stats.backend =
# "redis", Redis on loopback), which also reports Redis commands per message. Prints requests/s, p50 and p99 for each, the ratios, the receivers'
# peak RSS, the log sink's own rate, and checks that each log file holds a
# record for every 200 answered. (It may hold a few more: with sync = "always"
# a request whose connection wrk closes at the end of a run, while it waits
# for its fdatasync, is journaled and logged but never answered.)
#
#   scripts/bench-load.sh                      # 3 rounds of 10 s per server and load
#   ROUNDS=1 DURATION=5s scripts/bench-load.sh # quicker, noisier
#   RECEIVER=/tmp/old-receiver scripts/bench-load.sh   # another build, e.g. an older commit's
#   WORKER_THREADS=1 scripts/bench-load.sh     # the receivers' connection threads (server.worker_threads) and the ceiling's runtime threads: 1
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
SAMPLE=${SAMPLE:-samples/text.json}
CEILING_ADDR=127.0.0.1:18007
declare -A ADDR=([ceiling]=$CEILING_ADDR [os]=127.0.0.1:18006 [always]=127.0.0.1:18008 [sql]=127.0.0.1:18009
    [redis]=127.0.0.1:18010)
SERVERS="ceiling os always sql redis"
# The "sql" receiver is the "os" one with the SQL archive sink on: SQLite in the
# run's directory, as the default receiver runs it, unless ARCHIVE_URL names another.
SQL_TABLE=bench_load_$$
# The "redis" receiver is the "os" one with stats.backend = "redis", into this Redis.
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
REDIS_PREFIX=bench_load_$$:
redis() { redis-cli -u "$REDIS_URL" "$@"; }
CALLBACK_PATH=/callbackExample/callbackAfterSendSingleMsgCommand
export SAMPLE
# The threads that serve HTTP: the receivers' connection threads, the ceiling's runtime threads (unset: one per core).
if [ -n "${WORKER_THREADS:-}" ]; then
    export OPENIM_CALLBACK__SERVER__WORKER_THREADS=$WORKER_THREADS TOKIO_WORKER_THREADS=$WORKER_THREADS
fi
# Every request its own serverMsgID, as in real traffic (the SQL archive keys rows by it).
export UNIQUE_IDS=1

if ! command -v wrk >/dev/null || ! command -v redis-cli >/dev/null; then
    apt-get update -qq && apt-get install -y -qq wrk redis-tools
fi
# The receiver alone (see scripts/bench-instructions.sh: examples bring dev features).
cargo build --release --quiet --example ceiling --example log_sink_rate
if [ -z "${RECEIVER:-}" ]; then
    cargo build --release --quiet --bin openim-callback-receiver
fi
RECEIVER=${RECEIVER:-target/release/openim-callback-receiver}

work=$(mktemp -d)
ARCHIVE_URL=${ARCHIVE_URL:-sqlite://$work/sql/archive.sqlite3}
declare -A PID
cleanup() {
    kill "${PID[@]}" 2>/dev/null || true
    # Each receiver writes its journal and snapshot as it stops: gone first, then its files.
    wait "${PID[@]}" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

for mode in os always; do
    OPENIM_CALLBACK__SERVER__LISTEN=${ADDR[$mode]} OPENIM_CALLBACK__TELEMETRY__FORMAT=json \
        OPENIM_CALLBACK__STATS__SNAPSHOT_PATH="$work/$mode/stats.snapshot" \
        OPENIM_CALLBACK__JOURNAL__DIR="$work/$mode/journal" OPENIM_CALLBACK__JOURNAL__SYNC=$mode \
        OPENIM_CALLBACK__SINKS__SQL__URL="" \
        "$RECEIVER" >"$work/$mode.log" 2>&1 &
    PID[$mode]=$!
done
OPENIM_CALLBACK__SERVER__LISTEN=${ADDR[sql]} OPENIM_CALLBACK__TELEMETRY__FORMAT=json \
    OPENIM_CALLBACK__STATS__SNAPSHOT_PATH="$work/sql/stats.snapshot" OPENIM_CALLBACK__JOURNAL__DIR="$work/sql/journal" \
    OPENIM_CALLBACK__SINKS__SQL__ENABLED=true OPENIM_CALLBACK__SINKS__SQL__URL="$ARCHIVE_URL" \
    OPENIM_CALLBACK__SINKS__SQL__TABLE=$SQL_TABLE \
    "$RECEIVER" >"$work/sql.log" 2>&1 &
PID[sql]=$!
OPENIM_CALLBACK__SERVER__LISTEN=${ADDR[redis]} OPENIM_CALLBACK__TELEMETRY__FORMAT=json \
    OPENIM_CALLBACK__JOURNAL__DIR="$work/redis/journal" OPENIM_CALLBACK__STATS__BACKEND=redis \
    OPENIM_CALLBACK__STATS__REDIS_URL="$REDIS_URL" OPENIM_CALLBACK__STATS__KEY_PREFIX=$REDIS_PREFIX \
    OPENIM_CALLBACK__SINKS__SQL__URL="" \
    "$RECEIVER" >"$work/redis.log" 2>&1 &
PID[redis]=$!
target/release/examples/ceiling $CEILING_ADDR 2>/dev/null &
PID[ceiling]=$!
for addr in "${ADDR[@]}"; do
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
    local server=$1 connections=$2 addr=${ADDR[$1]}
    wrk -t1 -c"$connections" -d"$DURATION" --latency -s scripts/post-sample.lua \
        "http://$addr$CALLBACK_PATH" >"$work/wrk.out"
    local rps p50 p99 total bad
    rps=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk.out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$work/wrk.out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$work/wrk.out")")
    total=$(awk '/requests in/ {print $1}' "$work/wrk.out")
    bad=$(awk '/Non-2xx/ {print $NF}' "$work/wrk.out")
    echo "$rps $p50 $p99 $((total - ${bad:-0}))" >>"$work/$server-$connections"
    if [ "$server" = sql ]; then
        # How far the SQL sink is behind the moment the load stops.
        sql_lag >>"$work/sqllag-$connections"
    fi
    if [ "$server" = redis ]; then
        # How far the fleet stats sink is behind the moment the load stops.
        curl -s "http://${ADDR[redis]}/stats" |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["sinks"]["stats"]["lag_records"])' \
                >>"$work/redislag-$connections"
    fi
}

sql_lag() {
    curl -s "http://${ADDR[sql]}/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["sinks"]["sql"]["lag_records"])'
}
sql_caught_up() { while [ "$(sql_lag)" != 0 ]; do sleep 0.1; done; }

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

redis CONFIG RESETSTAT >/dev/null
for connections in 2 64; do
    # Warm every server up at this load before measuring.
    for server in $SERVERS; do DURATION=2s run "$server" "$connections"; : >"$work/$server-$connections"; done
    for _ in $(seq "$ROUNDS"); do
        for server in $SERVERS; do run "$server" "$connections"; done
    done
done

# The SQL sink catches up with what the 64-connection load left, timed.
catchup_started=$(date +%s.%N)
sql_left=$(sql_lag)
sql_caught_up
catchup_seconds=$(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $catchup_started}")
# Unpaced, wrk at 2 connections may send faster than the database on the same
# 2 cores inserts; a paced load shows the rate the archive keeps up with: 40 connections,
# each waiting 1 ms between requests, for 20 s.
paced_rps=$(DELAY_MS=1 wrk -t1 -c40 -d20s -s scripts/post-sample.lua "http://${ADDR[sql]}$CALLBACK_PATH" |
    awk '/^Requests\/sec/ {printf "%.0f", $2}')
paced_lag=$(sql_lag)
sql_caught_up
case $ARCHIVE_URL in
sqlite:*)
    sql_rows=$(python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM " + sys.argv[2]).fetchone()[0])' \
        "${ARCHIVE_URL#sqlite://}" "$SQL_TABLE" 2>/dev/null || echo "?")
    ;;
*)
    sql_rows=$(psql "$ARCHIVE_URL" -tAc "SELECT count(*) FROM $SQL_TABLE" 2>/dev/null || echo "?")
    psql "$ARCHIVE_URL" -qc "DROP TABLE IF EXISTS $SQL_TABLE" >/dev/null 2>&1 || true
    ;;
esac

# Redis's own count of the commands it ran (scripts' commands included), once the sink caught up.
while [ "$(curl -s "http://${ADDR[redis]}/stats" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["sinks"]["stats"]["lag_records"])')" != 0 ]; do
    sleep 0.1
done
redis_commands=$(redis INFO commandstats | awk -F'[=,:]' '/^cmdstat_/ {s += $3} END {print s}')
redis_calls=$(redis INFO commandstats |
    awk -F'[=,:]' '/^cmdstat_(evalsha|eval|hget|script)/ {s += $3} END {print s + 0}')
redis_fleet_total=$(curl -s "http://${ADDR[redis]}/stats" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["messages"]["total"])')
redis DEL $(redis KEYS "${REDIS_PREFIX}*") >/dev/null 2>&1 || true

declare -A ACCEPTED JOURNALED RSS RECORDS
for mode in os always sql redis; do
    ACCEPTED[$mode]=$(curl -s "http://${ADDR[$mode]}/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["requests"]["accepted"])')
    # Every record journaled: the 200s, and requests whose connection wrk closed at the end
    # of a run while they waited for their write or fdatasync (written, never answered).
    JOURNALED[$mode]=$(curl -s "http://${ADDR[$mode]}/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["journal"]["last_seq"])')
    RSS[$mode]=$(awk '/^VmHWM/ {print $2}' "/proc/${PID[$mode]}/status")
    kill -TERM "${PID[$mode]}"
    wait "${PID[$mode]}" || { echo "receiver ($mode) exited non-zero"; exit 1; }
    RECORDS[$mode]=$(grep -c '"target":"message"' "$work/$mode.log" || true)
done
log_rate=$(target/release/examples/log_sink_rate "$work/log-sink-alone.log")

echo
echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr)"
echo "wrk: 1 thread, $DURATION per run, median of $ROUNDS rounds, body $SAMPLE"
echo "threads serving HTTP per server: ${WORKER_THREADS:-one per core}"
echo "servers: ceiling; os = receiver with journal.sync = \"os\"; always = receiver with journal.sync = \"always\";" \
    "(those three: the archive off); sql = os with the SQL archive on (${ARCHIVE_URL%%:*})"
printf '\n%-6s %-9s %12s %10s %10s\n' conns server "requests/s" "p50 (us)" "p99 (us)"
declare -A result
for connections in 2 64; do
    for server in $SERVERS; do
        f="$work/$server-$connections"
        rps=$(cut -d' ' -f1 "$f" | median); p50=$(cut -d' ' -f2 "$f" | median); p99=$(cut -d' ' -f3 "$f" | median)
        result[$server-$connections]="$rps $p50 $p99"
        printf '%-6s %-9s %12.0f %10s %10s\n' "$connections" "$server" "$rps" "$p50" "$p99"
    done
done

verdict() { if awk "BEGIN {exit !($1)}"; then echo PASS; else echo FAIL; fi; }
rps() { read -r r _ _ <<<"${result[$1]}"; echo "$r"; }
ratio() { awk "BEGIN {printf \"%.2f\", $(rps "$1") / $(rps "$2")}"; }
os2=$(ratio os-2 ceiling-2); os64=$(ratio os-64 ceiling-64)
always2=$(rps always-2)
log_ratio=$(awk "BEGIN {printf \"%.1f\", $log_rate / $(rps os-64)}")
echo
read -r _ _ os2_p99 <<<"${result[os-2]}"
echo "sync=os:     receiver/ceiling requests/s at 2 connections:  $os2  (target >= 0.90) $(verdict "$os2 >= 0.90")"
echo "sync=os:     receiver/ceiling requests/s at 64 connections: $os64  (target >= 0.75) $(verdict "$os64 >= 0.75")"
echo "sync=os:     p99 at 2 connections: $os2_p99 us  (target <= 500) $(verdict "$os2_p99 <= 500")"
echo "sync=always: receiver/ceiling at 2 / 64 connections:        $(ratio always-2 ceiling-2) / $(ratio always-64 ceiling-64)"
echo "sync=always: requests/s at 2 connections:                   $(printf '%.0f' "$always2")  (target >= 5000) $(verdict "$always2 >= 5000")"
for mode in os always; do
    wrk_ok=$(cat "$work/$mode"-2 "$work/$mode"-64 | awk '{s += $4} END {print s}')
    echo "sync=$mode: peak RSS $((RSS[$mode] / 1024)) MiB (target <= 32) $(verdict "${RSS[$mode]} <= 32768");" \
        "log records ${RECORDS[$mode]}, answered 200 (receiver's count) ${ACCEPTED[$mode]}, 200s seen by wrk $wrk_ok" \
        "$(verdict "${RECORDS[$mode]} >= ${ACCEPTED[$mode]} && ${ACCEPTED[$mode]} >= $wrk_ok")"
done
echo "peak RSS with the archive on (sql): $((RSS[sql] / 1024)) MiB; with the stats in Redis: $((RSS[redis] / 1024)) MiB"
echo "log sink alone (journal read, parse, format): $log_rate records/s = ${log_ratio}x the 64-connection rate"
sql2=$(ratio sql-2 os-2); sql64=$(ratio sql-64 os-64)
lag2=$(sort -n "$work/sqllag-2" | tail -1)
echo "SQL sink on / off, requests/s at 2 connections:  $sql2  (target >= 0.90) $(verdict "$sql2 >= 0.90")"
echo "SQL sink on / off, requests/s at 64 connections: $sql64"
echo "SQL sink lag when an unpaced 2-connection run stops: at most $lag2 records (it catches up after)"
echo "SQL sink lag when a paced run of $paced_rps requests/s stops: $paced_lag records (it keeps up) $(verdict "$paced_lag <= 5000")"
redis2=$(ratio redis-2 os-2); redis64=$(ratio redis-64 os-64)
redislag2=$(sort -n "$work/redislag-2" | tail -1)
echo "stats in Redis / in memory, requests/s at 2 connections:  $redis2  (target >= 0.90) $(verdict "$redis2 >= 0.90")"
echo "stats in Redis / in memory, requests/s at 64 connections: $redis64  (target >= 0.90) $(verdict "$redis64 >= 0.90")"
# The fleet is handed fdatasynced records only: at a stop it is up to journal.sync_interval (1 s) behind.
echo "fleet stats lag when a 2-connection run stops: at most $redislag2 records (bound: 1 s of records) $(verdict "$redislag2 <= $(rps redis-2)")"
echo "fleet total ${redis_fleet_total} = records journaled ${JOURNALED[redis]} >= answered 200 ${ACCEPTED[redis]} $(verdict "$redis_fleet_total == ${JOURNALED[redis]} && ${JOURNALED[redis]} >= ${ACCEPTED[redis]}")"
echo "Redis round trips (script calls) per message: $(awk "BEGIN {printf \"%.4f\", $redis_calls / ${ACCEPTED[redis]}}");" \
    "commands run by Redis per message (inside the scripts included): $(awk "BEGIN {printf \"%.3f\", $redis_commands / ${ACCEPTED[redis]}}")"
echo "SQL sink catch-up after the 64-connection runs: $sql_left records in ${catchup_seconds} s; rows in the table: $sql_rows = records journaled ${JOURNALED[sql]} >= answered 200 ${ACCEPTED[sql]} $(verdict "$sql_rows == ${JOURNALED[sql]} && ${JOURNALED[sql]} >= ${ACCEPTED[sql]}")"
