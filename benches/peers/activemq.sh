#!/usr/bin/env bash
# activemq.sh start DIR | stop DIR
#
# Runs ActiveMQ Classic's JVM directly (not through /usr/bin/activemq, which hides the PID) as user
# activemq, with its config, log4j config and KahaDB in DIR, and a single STOMP connector on
# 127.0.0.1:$ACTIVEMQ_STOMP_PORT with Nagle off (transport.tcpNoDelay=true: without it STOMP adds
# ~20 ms at p50 under light load). The PID is in DIR/activemq.pid.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
cmd=$1
dir=$(realpath -m "$2")

case $cmd in
start)
    mkdir -p "$dir/data"
    cat >"$dir/activemq.xml" <<XML
<beans xmlns="http://www.springframework.org/schema/beans"
       xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
                           http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" useJmx="false" brokerName="perf"
          dataDirectory="$dir/data" schedulerSupport="false" advisorySupport="false">
    <persistenceAdapter>
      <kahaDB directory="$dir/data/kahadb"/>
    </persistenceAdapter>
    <transportConnectors>
      <transportConnector name="stomp"
          uri="stomp://127.0.0.1:$ACTIVEMQ_STOMP_PORT?transport.tcpNoDelay=true"/>
    </transportConnectors>
  </broker>
</beans>
XML
    cat >"$dir/log4j.properties" <<PROPS
log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$dir/activemq.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=%d %-5p [%t] %c - %m%n
PROPS
    chown -R activemq:activemq "$dir"
    start-stop-daemon --start --background --make-pidfile --pidfile "$dir/activemq.pid" \
        --chuid activemq --chdir "$dir" --output "$dir/activemq.out" \
        --exec /usr/bin/java -- \
        -Xms512M -Xmx512M \
        --add-opens java.base/java.lang=ALL-UNNAMED \
        --add-opens java.base/java.util=ALL-UNNAMED \
        --add-opens java.base/java.util.concurrent=ALL-UNNAMED \
        --add-opens java.base/java.net=ALL-UNNAMED \
        --add-opens java.base/java.security=ALL-UNNAMED \
        -Dlog4j.configuration="file:$dir/log4j.properties" \
        -Dactivemq.home=/usr/share/activemq \
        -Dactivemq.base="$dir" \
        -Dactivemq.conf=/etc/activemq/instances-available/main \
        -Dactivemq.data="$dir/data" \
        -jar /usr/share/activemq/bin/activemq.jar start "xbean:file:$dir/activemq.xml"
    wait_port "$ACTIVEMQ_STOMP_PORT" 60 || { tail -50 "$dir/activemq.out" "$dir/activemq.log" >&2 || true; exit 1; }
    log "activemq pid $(cat "$dir/activemq.pid") stomp 127.0.0.1:$ACTIVEMQ_STOMP_PORT"
    ;;
stop)
    stop_pid "$dir/activemq.pid"
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
