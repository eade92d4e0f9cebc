#!/usr/bin/env bash
# The "Running several replicas" setup, without Docker: two receivers (the
# release binary, configured by environment as the containers are) sharing
# their statistics through the Redis on 127.0.0.1:6379, behind nginx run with
# deploy/replicas/nginx.conf (its service names pointed at loopback ports).
# Posts 2,000 messages through nginx, checks that each replica took a share
# and both answer the fleet's total; stops one replica and posts 200 more,
# which nginx sends to the other; checks the total again.
#
#   scripts/try-replicas.sh
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
PREFIX=try_replicas_$$:
LB=127.0.0.1:18100
CALLBACK=/callbackExample/callbackAfterSendSingleMsgCommand
if ! command -v nginx >/dev/null || ! command -v redis-cli >/dev/null; then
    apt-get update -qq && apt-get install -y -qq nginx-light redis-tools >/dev/null
fi
cargo build --release --quiet --bin openim-callback-receiver

work=$(mktemp -d)
declare -A PID
cleanup() {
    kill "${PID[@]}" 2>/dev/null || true
    redis-cli -u "$REDIS_URL" DEL $(redis-cli -u "$REDIS_URL" KEYS "${PREFIX}*") >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

for replica in 1 2; do
    mkdir -p "$work/$replica"
    (cd "$work/$replica" && exec env -i OPENIM_CALLBACK__SERVER__LISTEN=127.0.0.1:1810$replica \
        OPENIM_CALLBACK__STATS__BACKEND=redis OPENIM_CALLBACK__STATS__REDIS_URL="$REDIS_URL" \
        OPENIM_CALLBACK__STATS__KEY_PREFIX="$PREFIX" OPENIM_CALLBACK__STATS__REPLICA_ID=openim-callback-$replica \
        OPENIM_CALLBACK__SINKS__LOG__ENABLED=false \
        "$OLDPWD/target/release/openim-callback-receiver" >"$work/$replica.log" 2>&1) &
    PID[$replica]=$!
done
# The shipped config, its upstream names pointed at this machine.
sed -e 's/openim-callback-\([12]\):10006/127.0.0.1:1810\1/' -e "s/listen 10006;/listen $LB;/" \
    deploy/replicas/nginx.conf >"$work/site.conf"
cat >"$work/nginx.conf" <<EOF
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events {}
http {
    access_log off;
    client_body_temp_path $work/body;
    proxy_temp_path $work/proxy;
    include $work/site.conf;
}
EOF
nginx -c "$work/nginx.conf" &
PID[nginx]=$!
for address in 127.0.0.1:18101 127.0.0.1:18102 $LB; do
    for _ in $(seq 100); do curl -sf -o /dev/null "http://$address/healthz" && break; sleep 0.1; done
done

post() { # post FROM TO: messages FROM..TO-1, each from user-(i % 200)
    for i in $(seq "$1" $(($2 - 1))); do
        curl -sf -o /dev/null -X POST -H 'Content-Type: application/json' -H "operationID: try-$i" \
            --data "{\"sendID\":\"user-$((i % 200))\",\"recvID\":\"bob\",\"contentType\":101,\"serverMsgID\":\"try-$i\",\"createTime\":$(date +%s%3N)}" \
            "http://$LB$CALLBACK" || { echo "message $i was not answered 200"; exit 1; }
    done
}
field() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
fleet_total() { # wait until the fleet total read at $1 is $2
    for _ in $(seq 300); do
        [ "$(curl -s "http://$1/stats" | field 'd["messages"]["total"]')" = "$2" ] && return 0
        sleep 0.1
    done
    echo "FAIL: the fleet total at $1 never reached $2"; exit 1
}

post 0 2000
for replica in 1 2; do
    accepted=$(curl -s "http://127.0.0.1:1810$replica/stats" | field 'd["requests"]["accepted"]')
    echo "replica $replica took $accepted of 2000"
    [ "$accepted" -gt 0 ] || { echo "FAIL: nginx sent replica $replica nothing"; exit 1; }
    fleet_total "127.0.0.1:1810$replica" 2000
done
fleet_total $LB 2000
echo "both replicas and the load balancer answer the fleet's total: 2000"
curl -s "http://$LB/stats" | field '"distinct senders: %d (200 sent)" % d["people"]["senders"]'

kill -TERM "${PID[2]}"; wait "${PID[2]}"; unset 'PID[2]'
post 2000 2200
fleet_total $LB 2200
echo "replica 2 stopped: nginx sent the next 200 to replica 1, every one answered 200; fleet total 2200"
echo PASS
