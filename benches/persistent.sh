#!/usr/bin/env bash
# One persistent end-to-end case against a fresh `tandem run` (release), reading journal counters.
# Build first: cargo build --release. Starts its own broker on 127.0.0.1 port 0 with a temp data dir.
# usage: benches/persistent.sh PRODUCERS SYNC_DELAY_MS
set -euo pipefail
T="$(cd "$(dirname "$0")/.." && pwd)/target/release/tandem"
D=$(mktemp -d)
$T run --listen 127.0.0.1:0 --http 127.0.0.1:0 --stomp off --data-dir "$D" --journal-sync-delay-ms "$2" > "$D/out" 2>"$D/err" &
PID=$!
for i in $(seq 1 100); do grep -q READY "$D/out" 2>/dev/null && break; sleep 0.05; done
NATIVE=$(grep -o 'native=[^ ]*' "$D/out" | cut -d= -f2); HTTP=$(grep -o 'http=[^ ]*' "$D/out" | cut -d= -f2)
m() { curl -s "http://$HTTP/metrics" | awk -v k="$1" '$1==k {print $2}'; }
B0=$(m tandem_journal_batches_total); R0=$(m tandem_journal_records_total); F0=$(m tandem_journal_fsyncs_total); A0=$(m tandem_journal_appends_total)
S0=$(date +%s.%N)
$T perf --url "tcp://$NATIVE" --broker-pid $PID -p "$1" -c "$1" --persistent -d queue:pm -s 1024 --duration 10s --warmup 2s --max-in-flight 1000 --json -q > "$D/perf.json"
S1=$(date +%s.%N)
B1=$(m tandem_journal_batches_total); R1=$(m tandem_journal_records_total); F1=$(m tandem_journal_fsyncs_total); A1=$(m tandem_journal_appends_total)
kill $PID; wait $PID 2>/dev/null || true
python3 - "$D/perf.json" "$B0" "$B1" "$R0" "$R1" "$F0" "$F1" "$A0" "$A1" "$S0" "$S1" "$1" "$2" <<'PY'
import json,sys
j=json.load(open(sys.argv[1]))
b0,b1,r0,r1,f0,f1,a0,a1=map(float,sys.argv[2:10]); s0,s1=float(sys.argv[10]),float(sys.argv[11])
def g(d,*ks):
    for k in ks:
        if isinstance(d,dict) and k in d: d=d[k]
        else: return None
    return d
el=s1-s0
print(json.dumps({"producers":sys.argv[12],"sync_delay_ms":sys.argv[13],
 "received_per_s": g(j,"rates","received_per_s") or g(j,"receive_rate") or {k:v for k,v in j.items() if 'rate' in k.lower()},
 "missing": g(j,"accounting","missing"), "dups": g(j,"accounting","duplicates"),
 "appends_per_batch": round((a1-a0)/max(b1-b0,1),1),
 "records_per_batch": round((r1-r0)/max(b1-b0,1),1), "fsyncs_per_s": round((f1-f0)/el,1), "exit": "ok"}))
PY
cat "$D/perf.json" | python3 -c 'import json,sys; j=json.load(sys.stdin); print({k:j[k] for k in list(j)[:12]})'
rm -rf "$D"
