#!/usr/bin/env bash
# run.sh [OUT_DIR]: the peer comparison of issue 6, in one run.
#
# Installs (when missing) and starts ActiveMQ Classic and RabbitMQ on loopback, starts a release
# `tandem run`, then runs the same `tandem perf` cases against tandem (native and STOMP) and both
# peers (STOMP), interleaved: for each of RUNS rounds, every case against every target in turn.
# Stops every broker by PID and writes OUT_DIR/results.md (medians and ratios) beside the raw
# JSON reports. Every case is bounded (--duration), so a full run is too:
# cases × targets × RUNS × (DURATION + a few seconds).
#
# Environment: DURATION (default 8s, warm-up 2s included), RUNS (default 3), TARGETS (default
# "tandem-native tandem-stomp activemq rabbitmq"), CASES (default: all six below).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$here/lib.sh"

out=$(realpath -m "${1:-$root/target/peers/$(date -u +%Y%m%dT%H%M%S)}")
DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-2s}
RUNS=${RUNS:-3}
TARGETS=${TARGETS:-"tandem-native tandem-stomp activemq rabbitmq"}
CASES=${CASES:-"np-1x1 p-1x1 np-4x4 p-4x4 lat-np lat-p"}
tandem="$root/target/release/tandem"
mkdir -p "$out/raw"
work=$(mktemp -d /tmp/tandem-peers.XXXXXX)
chmod 755 "$work"

[ -x "$tandem" ] || { log "build first: cargo build --release"; exit 1; }
"$here/install.sh" >"$out/versions.txt"

cleanup() {
    log "stopping brokers"
    "$here/activemq.sh" stop "$work/activemq" || true
    "$here/rabbitmq.sh" stop "$work/rabbitmq" || true
    stop_pid "$work/tandem.pid" || true
}
trap cleanup EXIT

# Brokers.
mkdir -p "$work/tandem-data"
"$tandem" run --listen "127.0.0.1:$TANDEM_NATIVE_PORT" --stomp "127.0.0.1:$TANDEM_STOMP_PORT" \
    --http off --data-dir "$work/tandem-data" >"$work/tandem.out" 2>"$work/tandem.err" &
echo $! >"$work/tandem.pid"
wait_port "$TANDEM_STOMP_PORT" 30
case " $TARGETS " in *" activemq "*) "$here/activemq.sh" start "$work/activemq" ;; esac
case " $TARGETS " in *" rabbitmq "*) "$here/rabbitmq.sh" start "$work/rabbitmq" ;; esac

target_args() {
    case $1 in
    tandem-native) echo "--url tcp://127.0.0.1:$TANDEM_NATIVE_PORT --broker-pid $(cat "$work/tandem.pid")" ;;
    tandem-stomp) echo "--stomp 127.0.0.1:$TANDEM_STOMP_PORT --broker-pid $(cat "$work/tandem.pid")" ;;
    activemq) echo "--stomp 127.0.0.1:$ACTIVEMQ_STOMP_PORT --broker-pid $(cat "$work/activemq/activemq.pid")" ;;
    rabbitmq) echo "--stomp 127.0.0.1:$RABBITMQ_STOMP_PORT --broker-pid $(cat "$work/rabbitmq/rabbitmq.pid")" ;;
    esac
}

# The standard cases of issue 6: 1 KiB bodies, a receipt every 100 STOMP sends.
case_args() {
    case $1 in
    np-1x1) echo "-p 1 -c 1" ;;
    p-1x1) echo "-p 1 -c 1 --persistent" ;;
    np-4x4) echo "-p 4 -c 4" ;;
    p-4x4) echo "-p 4 -c 4 --persistent" ;;
    lat-np) echo "-p 1 -c 1 --rate 10000" ;;
    lat-p) echo "-p 1 -c 1 --rate 10000 --persistent" ;;
    esac
}

perf() { # perf CASE TARGET RUN
    local c=$1 t=$2 r=$3
    # A fresh queue per run: no backlog or durability settings carry over between runs.
    local args="$(target_args "$t") $(case_args "$c") -d queue:perf.$c.$r --size 1024 \
        --duration $DURATION --warmup $WARMUP --receipt-every 100 --json --quiet"
    echo "tandem perf $args" | tr -s ' ' | sed "s|--broker-pid [0-9]*|--broker-pid PID|" >"$out/raw/$c.$t.$r.cmd"
    # Other work on the machine skews a run: keep the load average beside it.
    cut -d' ' -f1 /proc/loadavg >"$out/raw/$c.$t.$r.load"
    # shellcheck disable=SC2086
    "$tandem" perf $args >"$out/raw/$c.$t.$r.json" 2>"$out/raw/$c.$t.$r.err" || true
    log "$c $t run $r: $(jq -r '"\(.receive_rate) msg/s, broker \(.cpu_broker.us_per_msg) us/msg, p99 \(.latency_e2e.p99_us) us, exit \(.exit_code)"' "$out/raw/$c.$t.$r.json" 2>/dev/null || echo failed)"
}

# JIT and allocator warm-up for every broker, not measured.
for t in $TARGETS; do
    # shellcheck disable=SC2046
    "$tandem" perf $(target_args "$t") -d queue:perf.warm -p 2 -c 2 --duration 3s --quiet \
        --json >/dev/null 2>&1 || true
done

for r in $(seq "$RUNS"); do
    for c in $CASES; do
        for t in $TARGETS; do
            perf "$c" "$t" "$r"
        done
    done
done

{
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "versions: $(tr '\n' ';' <"$out/versions.txt") tandem $(git -C "$root" rev-parse --short HEAD)"
    echo "1-minute load average before each run: min $(cat "$out"/raw/*.load | sort -g | head -1), median $(cat "$out"/raw/*.load | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'), max $(cat "$out"/raw/*.load | sort -g | tail -1) (2 cores; above ~2 means other work competed)"
    echo
    "$here/report.sh" "$out/raw" "$CASES" "$TARGETS"
} >"$out/results.md"
log "results: $out/results.md"
