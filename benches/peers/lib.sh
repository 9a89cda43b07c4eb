# Shared helpers for the peer benchmark scripts (sourced, not run).

# Ports: tandem's defaults are 61616 (native) and 61613 (STOMP); the peers' defaults clash with
# them, so every broker here gets its own.
TANDEM_NATIVE_PORT=${TANDEM_NATIVE_PORT:-61716}
TANDEM_STOMP_PORT=${TANDEM_STOMP_PORT:-61713}
ACTIVEMQ_STOMP_PORT=${ACTIVEMQ_STOMP_PORT:-61623}
RABBITMQ_STOMP_PORT=${RABBITMQ_STOMP_PORT:-61633}
RABBITMQ_AMQP_PORT=${RABBITMQ_AMQP_PORT:-5682}
RABBITMQ_DIST_PORT=${RABBITMQ_DIST_PORT:-25682}

log() { echo "[peers $(date -u +%H:%M:%S)] $*" >&2; }

# wait_port PORT SECONDS: until something accepts on 127.0.0.1:PORT.
wait_port() {
    local port=$1 limit=$2 i=0
    while ! (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; do
        i=$((i + 1))
        if [ "$i" -gt $((limit * 10)) ]; then
            log "nothing listens on 127.0.0.1:$port after ${limit}s"
            return 1
        fi
        sleep 0.1
    done
}

# stop_pid PIDFILE: SIGTERM the process it names, wait up to 30 s, then SIGKILL.
stop_pid() {
    local file=$1 pid i
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for i in $(seq 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$file"
}
