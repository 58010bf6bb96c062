#!/usr/bin/env bash
# Run `streamer demo` for N seconds with a crop subscriber attached and report CPU use of the
# streamer process and the detector process (user+sys time over wall time).
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-20}
tick=$(getconf CLK_TCK)
.venv/bin/streamer demo --duration "$dur" --stats-file /tmp/demo-stats.json 2>/tmp/demo.log &
pid=$!
sleep 1
det=$(pgrep -f "streamer.demo_detector" | head -1)
.venv/bin/streamer crops tcp://127.0.0.1:5560 --timeout 5 >/tmp/demo-crops.txt 2>&1 &
sub=$!
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
a=$(cpu "$pid"); b=$(cpu "$det"); t0=$(date +%s.%N)
sleep $((dur - 3))
a2=$(cpu "$pid"); b2=$(cpu "$det"); t1=$(date +%s.%N)
wait "$pid"; kill "$sub" 2>/dev/null || true
awk -v a="$a" -v a2="$a2" -v b="$b" -v b2="$b2" -v t0="$t0" -v t1="$t1" -v tick="$tick" 'BEGIN {
  w = t1 - t0; printf "streamer CPU %.0f%% of one core, detector CPU %.0f%%\n", 100*(a2-a)/tick/w, 100*(b2-b)/tick/w }'
tail -3 /tmp/demo.log
echo "crops received by the subscriber: $(wc -l < /tmp/demo-crops.txt)"
