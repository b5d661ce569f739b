#!/usr/bin/env bash
# Steps the offered call rate through one calltrackd process (routing to a SIPp PBX on
# loopback, UDP, calls of 1 s to a static number) and prints, per step: calls, failed,
# retransmissions, the daemon's CPU share and resident memory.
#   tests/bench/cps_steps.sh [SECONDS_PER_STEP] [RATES...]     e.g. 30 100 200 300 400
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
DUR="${1:-30}"; shift || true
RATES=("${@:-100 200 300 400}")
W="$(mktemp -d)"; trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
S="$ROOT/tests/scenarios"
sed -e 's/5060/15360/g; s/8080/18380/; s/5070/15370/; s/level = "info"/level = "warning"/' \
    -e 's/format = "console"/format = "json"/' "$ROOT/config/calltrackd.toml" > "$W/c.toml"
(cd "$W" && exec "$PY" -m calltrackd run --config c.toml > d.log 2>&1) &
PID=$!
sleep 2
sipp -sf "$S/uas_answer.xml" -i 127.0.0.1 -p 15370 -nostdin -bg -timeout 3600s >/dev/null 2>&1 || true
HZ=$(getconf CLK_TCK)
printf "%6s %7s %7s %8s %6s %8s\n" rate calls failed retrans cpu% rss_MB
for r in ${RATES[@]}; do
  t0=$(awk '{print $14+$15}' /proc/$PID/stat)
  sipp -sf "$S/uac_call.xml" -i 127.0.0.1 -p 15361 -r "$r" -m $((r*DUR)) -d 1000 \
       -s +74990000100 -key caller +79161234567 -nostdin -timeout $((DUR+30))s \
       -trace_stat -stf "$W/s$r.csv" 127.0.0.1:15360 > "$W/o$r.out" 2>&1 || true
  t1=$(awk '{print $14+$15}' /proc/$PID/stat)
  last=$(tail -1 "$W/s$r.csv")
  head=$(head -1 "$W/s$r.csv")
  col() { echo "$head" | tr ';' '\n' | grep -n "^$1\$" | cut -d: -f1; }
  ok=$(echo "$last" | cut -d';' -f"$(col 'SuccessfulCall(C)')")
  bad=$(echo "$last" | cut -d';' -f"$(col 'FailedCall(C)')")
  re=$(echo "$last" | cut -d';' -f"$(col 'Retransmissions(C)')")
  rss=$(awk '/VmRSS/{print int($2/1024)}' /proc/$PID/status)
  cpu=$(( (t1-t0) * 100 / HZ / (DUR+1) ))
  printf "%6s %7s %7s %8s %6s %8s\n" "$r" "$ok" "$bad" "$re" "$cpu" "$rss"
done
pkill -f "uas_answer.xml -i 127.0.0.1 -p 15370" || true
kill "$PID"
