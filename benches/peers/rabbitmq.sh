#!/usr/bin/env bash
# rabbitmq.sh start DIR | stop DIR
#
# Runs RabbitMQ's inner start script (which execs the Erlang VM, so the PID we record is the
# broker's) as user rabbitmq, with config, Mnesia, logs and Erlang cookie in DIR. Everything
# listens on 127.0.0.1: STOMP on $RABBITMQ_STOMP_PORT (Nagle off), AMQP on $RABBITMQ_AMQP_PORT,
# Erlang distribution on $RABBITMQ_DIST_PORT, epmd (which the VM starts) on 127.0.0.1:4369. The
# PIDs are in DIR/rabbitmq.pid and DIR/epmd.pid.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
cmd=$1
dir=$(realpath -m "$2")
inner=$(ls -d /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server | tail -1)

case $cmd in
start)
    mkdir -p "$dir/mnesia" "$dir/log"
    cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$RABBITMQ_AMQP_PORT
stomp.listeners.tcp.1 = 127.0.0.1:$RABBITMQ_STOMP_PORT
stomp.tcp_listen_options.nodelay = true
tcp_listen_options.nodelay = true
log.file.level = warning
CONF
    echo '[rabbitmq_stomp].' >"$dir/enabled_plugins"
    chown -R rabbitmq:rabbitmq "$dir"
    had_epmd=$(pgrep -u rabbitmq -x epmd || true)
    HOME="$dir" \
    RUNNING_UNDER_SYSTEMD=1 \
    RABBITMQ_NODENAME=perf@localhost \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$RABBITMQ_AMQP_PORT" \
    RABBITMQ_DIST_PORT="$RABBITMQ_DIST_PORT" \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/rabbit-internal.pid" \
    start-stop-daemon --start --background --make-pidfile --pidfile "$dir/rabbitmq.pid" \
        --chuid rabbitmq --chdir "$dir" --output "$dir/rabbitmq.out" \
        --exec "$inner"
    wait_port "$RABBITMQ_STOMP_PORT" 90 || { tail -50 "$dir/rabbitmq.out" >&2 || true; exit 1; }
    if [ -z "$had_epmd" ]; then
        pgrep -u rabbitmq -x epmd >"$dir/epmd.pid" || rm -f "$dir/epmd.pid"
    fi
    log "rabbitmq pid $(cat "$dir/rabbitmq.pid") stomp 127.0.0.1:$RABBITMQ_STOMP_PORT"
    ;;
stop)
    stop_pid "$dir/rabbitmq.pid"
    stop_pid "$dir/epmd.pid"
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
