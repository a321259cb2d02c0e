#!/usr/bin/env bash
# Profiles lineship during one `lineship-load compare` run at one rate (vmagent left out):
# perf samples the daemon for 4 s while the load runs, then prints the top entries by thread
# and symbol. Traffic goes to 127.0.0.1 only, and the run ends by itself.
#
#   cargo build --release
#   lineship-load/scripts/profile-udp.sh 100000 [target/release/lineship] [/tmp/profile-100k]
set -euo pipefail
cd "$(dirname "$0")/../.."
rate=${1:?usage: profile-udp.sh RATE [LINESHIP] [OUT_PREFIX]}
bin=$(realpath "${2:-target/release/lineship}")
out=${3:-/tmp/lineship-profile-$rate}
command -v perf >/dev/null || { echo "perf not found (Debian package linux-perf)" >&2; exit 2; }
target/release/lineship-load compare --lineship "$bin" --rates "$rate" --repeat 1 --secs 6 \
  --vmagent-bin /nonexistent/vmagent > "$out.compare.txt" 2>&1 &
harness=$!
pid=
for _ in $(seq 1 200); do
  pid=$(pgrep -f "^$bin --config" | head -1 || true)
  [ -n "$pid" ] && break
  sleep 0.05
done
[ -n "$pid" ] || { echo "lineship did not start; see $out.compare.txt" >&2; wait "$harness"; exit 2; }
sleep 1.5   # past start-up, into the sending
perf record -q -F 1999 -p "$pid" -o "$out.data" -- sleep 4 >/dev/null 2>&1
wait "$harness" || true
grep -E '^\| [0-9]' "$out.compare.txt" || true
perf report -i "$out.data" --no-children --sort comm --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -6
perf report -i "$out.data" --no-children --sort comm,sym --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25
