#!/usr/bin/env bash
# Relay benchmark: Postfix's smtp-source into smtp-sink directly (the
# reference), then the same load through smtp-shaper into smtp-sink, timed
# until the sink has every message. Then memory with 100,000 messages queued
# while the gateway is down, the time a restart takes to accept mail with
# them queued, and the drain once the gateway is back (messages per second
# to the sink, RSS while draining). Prints figures and ratios; never fails
# on a timing (it exits non-zero only when something did not run).
#
# Needs: postfix (smtp-source, smtp-sink). Usage:
#   scripts/bench-relay.sh                 # 10,000 messages, 20 sessions, 4 KiB
#   MESSAGES=20000 SESSIONS=20 SIZE=4096 QUEUED=100000 scripts/bench-relay.sh
# WORKER_THREADS sets smtp-shaper's server.worker_threads (default 1).
# SOURCE_FLAGS adds smtp-source options, e.g. SOURCE_FLAGS=-d to keep each
# session's connection open between messages.
set -euo pipefail

MESSAGES=${MESSAGES:-10000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-4096}
QUEUED=${QUEUED:-100000}
SOURCE_FLAGS=${SOURCE_FLAGS:-}
SINK_PORT=${SINK_PORT:-2625}
PROXY_PORT=${PROXY_PORT:-2635}
DEAD_PORT=${DEAD_PORT:-2645}
WORKER_THREADS=${WORKER_THREADS:-1}

for tool in smtp-source smtp-sink; do
    if ! command -v "$tool" >/dev/null && [ ! -x "/usr/sbin/$tool" ]; then
        echo "bench-relay: $tool not found; install Debian's postfix package" >&2
        exit 2
    fi
done
export PATH="$PATH:/usr/sbin"

cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=$PWD/target/release/smtp-shaper
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }

# Starts smtp-sink (on port $1, default $SINK_PORT) with a running counter
# in $WORK/sink.out.
start_sink() {
    local port=${1:-$SINK_PORT}
    : > "$WORK/sink.out"
    smtp-sink -c -u "$(id -un)" "127.0.0.1:$port" 1024 > "$WORK/sink.out" 2>&1 &
    SINK_PID=$!
    PIDS+=("$SINK_PID")
    wait_port "$port"
}

stop_sink() { kill "$SINK_PID"; wait "$SINK_PID" 2>/dev/null || true; }

wait_port() {
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "bench-relay: nothing listens on port $1" >&2
    exit 1
}

# Messages the sink has completed so far (its counter line is rewritten with CR).
sink_count() {
    tr '\r' '\n' < "$WORK/sink.out" | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2 || true
}

wait_sink() {
    local want=$1
    while true; do
        local got
        got=$(sink_count)
        if [ "${got:-0}" -ge "$want" ]; then return 0; fi
        sleep 0.02
    done
}

write_config() {
    cat > "$WORK/$1.toml" <<EOF
[server]
listen = "127.0.0.1:$PROXY_PORT"
max_connections = 1000
# smtp-source opens a connection per message (without -d), from one address.
client_connection_rate = "1000000/s"
worker_threads = $WORKER_THREADS
[spool]
dir = "$WORK/$1-spool"
[[gateways]]
name = "sink"
address = "127.0.0.1:$2"
max_connections = $SESSIONS
# This benchmark measures the relay path, not shaping: a ceiling far above
# what loopback can carry (cargo bench --bench shaper measures the shaper).
[gateways.shaping]
initial_rate = "1000000/s"
min_rate = "1000000/s"
max_rate = "1000000/s"
burst = 100000
max_queued = 10000000
max_queue_delay = "1d"
${CLUSTER_SECTION:-}
EOF
}

source_run() {
    # shellcheck disable=SC2086
    smtp-source $SOURCE_FLAGS -s "$SESSIONS" -l "$SIZE" -m "$1" -f app@example.com -t user@example.org "127.0.0.1:$2"
}

# Starts smtp-shaper on config NAME relaying to GATEWAY_PORT; sets SHAPER_PID.
start_shaper() {
    write_config "$1" "$2"
    launch_shaper "$1"
    wait_port "$PROXY_PORT"
}

# Starts smtp-shaper on the config NAME written before (its spool as it is).
launch_shaper() {
    RUST_LOG=warn "$BIN" run --config "$WORK/$1.toml" 2>> "$WORK/$1.log" &
    SHAPER_PID=$!
    PIDS+=("$SHAPER_PID")
}

stop_shaper() { kill -TERM "$SHAPER_PID"; wait "$SHAPER_PID" || true; }

# Messages per second: rate COUNT START END.
rate() { echo "$1 / ($3 - $2)" | bc -l; }

rss_kib() { awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"; }

echo "smtp-shaper relay benchmark: $MESSAGES messages of $SIZE octets over $SESSIONS sessions $SOURCE_FLAGS (worker_threads = $WORKER_THREADS)"
echo "machine: $(nproc) cores, $(uname -r)"

# 1. Reference: straight into the sink.
start_sink
t0=$(now)
source_run "$MESSAGES" "$SINK_PORT"
wait_sink "$MESSAGES"
t1=$(now)
stop_sink
direct=$(rate "$MESSAGES" "$t0" "$t1")

# 2. Through smtp-shaper (fsync on every acknowledged batch).
start_sink
start_shaper relay "$SINK_PORT"
t0=$(now)
source_run "$MESSAGES" "$PROXY_PORT"
t_accepted=$(now)
wait_sink "$MESSAGES"
t1=$(now)
relay_peak=$(rss_kib "$SHAPER_PID" VmHWM)
stop_shaper
stop_sink
relay=$(rate "$MESSAGES" "$t0" "$t1")
accept=$(rate "$MESSAGES" "$t0" "$t_accepted")

# 2b. The same with [cluster]: every send decided by a Lua script in a real
# Redis (Debian's redis-server, skipped without it), the relay's ratio to
# standalone printed beside it.
clustered=""
if command -v redis-server >/dev/null; then
    REDIS_PORT=$((PROXY_PORT + 3))
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no > "$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_port "$REDIS_PORT"
    CLUSTER_SECTION=$(printf '[cluster]\nredis = "redis://127.0.0.1:%s/0"\nnode = "bench"\nexpected_nodes = 1' "$REDIS_PORT")
    start_sink
    start_shaper clustered "$SINK_PORT"
    # The first heartbeat connects the node (until then it runs on its share).
    sleep 1.5
    t0=$(now)
    source_run "$MESSAGES" "$PROXY_PORT"
    wait_sink "$MESSAGES"
    t1=$(now)
    stop_shaper
    stop_sink
    kill "$REDIS_PID" 2>/dev/null || true
    CLUSTER_SECTION=""
    clustered=$(rate "$MESSAGES" "$t0" "$t1")
fi

# 3. Memory with $QUEUED messages queued while the gateway is down.
start_shaper queued "$DEAD_PORT"
t0=$(now)
source_run "$QUEUED" "$PROXY_PORT"
t1=$(now)
queued_rss=$(rss_kib "$SHAPER_PID" VmRSS)
queued_peak=$(rss_kib "$SHAPER_PID" VmHWM)
queued_disk=$(du -sk "$WORK/queued-spool" | cut -f1)
stop_shaper
queue_accept=$(rate "$QUEUED" "$t0" "$t1")

# 4. The gateway is back: restart with $QUEUED queued, time until one new
# message is accepted (250, durable), then drain everything into the sink,
# sampling RSS once a second.
start_sink "$DEAD_PORT"
t0=$(now)
launch_shaper queued
until (exec 3<>"/dev/tcp/127.0.0.1/$PROXY_PORT") 2>/dev/null; do sleep 0.01; done
smtp-source -s 1 -l "$SIZE" -m 1 -f app@example.com -t user@example.org "127.0.0.1:$PROXY_PORT"
t_accepting=$(now)
drain_rss=0
while true; do
    got=$(sink_count)
    if [ "${got:-0}" -ge $((QUEUED + 1)) ]; then break; fi
    rss=$(rss_kib "$SHAPER_PID" VmRSS)
    if [ "${rss:-0}" -gt "$drain_rss" ]; then drain_rss=$rss; fi
    sleep 1
done
t_drained=$(now)
drain_peak=$(rss_kib "$SHAPER_PID" VmHWM)
stop_shaper
stop_sink
restart_seconds=$(echo "$t_accepting - $t0" | bc -l)
drain=$(rate "$QUEUED" "$t_accepting" "$t_drained")

printf '\n%-46s %12s\n' "run" "messages/s"
printf '%-46s %12.0f\n' "smtp-source -> smtp-sink (reference)" "$direct"
printf '%-46s %12.0f\n' "smtp-source -> smtp-shaper -> smtp-sink" "$relay"
printf '%-46s %12.0f\n' "  of which accepted (250, durable) at" "$accept"
if [ -n "$clustered" ]; then
    printf '%-46s %12.0f\n' "  the same with [cluster] (Redis decides)" "$clustered"
fi
printf '%-46s %12.0f\n' "accepted with the gateway down" "$queue_accept"
printf '%-46s %12.0f\n' "drain of $QUEUED queued, gateway back" "$drain"
printf '\nrelay / direct ratio: %.2f  (target >= 0.40)\n' "$(echo "$relay / $direct" | bc -l)"
if [ -n "$clustered" ]; then
    printf 'cluster / standalone relay: %.2f  (target >= 0.80)\n' "$(echo "$clustered / $relay" | bc -l)"
fi
printf 'relay rate vs target 2000/s: %.2fx\n' "$(echo "$relay / 2000" | bc -l)"
printf 'peak RSS while relaying: %.1f MiB\n' "$(echo "$relay_peak / 1024" | bc -l)"
printf 'RSS with %d messages queued: %.1f MiB (peak %.1f MiB, target <= 150 MiB at 1,000,000); spool on disk %.0f MiB\n' \
    "$QUEUED" "$(echo "$queued_rss / 1024" | bc -l)" "$(echo "$queued_peak / 1024" | bc -l)" "$(echo "$queued_disk / 1024" | bc -l)"
printf 'restart to accepting with %d queued: %.1f s (target <= 10 s)\n' "$QUEUED" "$restart_seconds"
printf 'RSS while draining %d: at most %.1f MiB sampled, peak %.1f MiB (target <= 150 MiB)\n' \
    "$QUEUED" "$(echo "$drain_rss / 1024" | bc -l)" "$(echo "$drain_peak / 1024" | bc -l)"
