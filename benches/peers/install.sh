#!/usr/bin/env bash
# Installs ActiveMQ Classic and RabbitMQ from Debian's packages when they are missing. The
# container's policy-rc.d keeps them from starting on install; activemq.sh and rabbitmq.sh start
# them by hand, on loopback only.
set -euo pipefail
missing=()
dpkg -s activemq >/dev/null 2>&1 || missing+=(activemq)
dpkg -s rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi
dpkg-query -W -f='${Package} ${Version}\n' activemq rabbitmq-server
