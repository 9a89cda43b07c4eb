#!/usr/bin/env bash
# report.sh RAW_DIR "CASES" "TARGETS": one markdown table per case from the JSON reports
# (RAW_DIR/CASE.TARGET.RUN.json): medians over the runs, and each target's received rate as a
# ratio to the better of the two peers.
set -euo pipefail
raw=$1
cases=$2
targets=$3

median() { # numbers on stdin, one per line -> median (or "-")
    sort -g | awk '{v[NR]=$1} END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2 }'
}

field() { # field CASE TARGET JQ -> one value per successful run
    local f
    for f in "$raw/$1.$2".*.json; do
        [ -s "$f" ] || continue
        jq -r "select(.exit_code == 0) | $3 // empty" "$f" 2>/dev/null || true
    done
}

title() {
    case $1 in
    np-1x1) echo "Non-persistent, 1 producer / 1 consumer, unpaced" ;;
    p-1x1) echo "Persistent, 1 producer / 1 consumer, unpaced" ;;
    np-4x4) echo "Non-persistent, 4 producers / 4 consumers, unpaced" ;;
    p-4x4) echo "Persistent, 4 producers / 4 consumers, unpaced" ;;
    lat-np) echo "Latency, non-persistent, 1/1 at a fixed 10,000 msg/s" ;;
    lat-p) echo "Latency, persistent, 1/1 at a fixed 10,000 msg/s" ;;
    *) echo "$1" ;;
    esac
}

for c in $cases; do
    echo "### $(title "$c")"
    echo
    cmd=$(ls "$raw/$c".*.1.cmd 2>/dev/null | head -1)
    [ -n "$cmd" ] && { echo '```'; cat "$raw/$c".*.1.cmd; echo '```'; echo; }
    best_peer=0
    for t in activemq rabbitmq; do
        v=$(field "$c" "$t" .receive_rate | median)
        [ "$v" != "-" ] && best_peer=$(awk -v a="$best_peer" -v b="$v" 'BEGIN { print (b > a) ? b : a }')
    done
    echo "| target | ok runs | received msg/s | × best peer | broker CPU µs/msg | perf CPU µs/msg | e2e p50 µs | e2e p99 µs | confirm p99 µs | broker disk written MiB |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    for t in $targets; do
        n_ok=$(field "$c" "$t" .exit_code | wc -l)
        n_all=$(ls "$raw/$c.$t".*.json 2>/dev/null | wc -l)
        rate=$(field "$c" "$t" .receive_rate | median)
        ratio=$(awk -v a="$rate" -v b="$best_peer" 'BEGIN { if (a == "-" || b == 0) print "-"; else printf "%.2f", a / b }')
        bcpu=$(field "$c" "$t" .cpu_broker.us_per_msg | median)
        tcpu=$(field "$c" "$t" .cpu_tool.us_per_msg | median)
        p50=$(field "$c" "$t" .latency_e2e.p50_us | median)
        p99=$(field "$c" "$t" .latency_e2e.p99_us | median)
        cp99=$(field "$c" "$t" .latency_confirm.p99_us | median)
        disk=$(field "$c" "$t" '(.cpu_broker.disk_write_bytes / 1048576 * 10 | round / 10)' | median)
        echo "| $t | $n_ok/$n_all | $rate | $ratio | $bcpu | $tcpu | $p50 | $p99 | $cp99 | $disk |"
    done
    echo
done
