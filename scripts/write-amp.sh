#!/usr/bin/env bash
# Single-node write amplification (issue 17): bytes the broker process writes to disk
# (/proc/PID/io write_bytes) while an offline persistent session's queue fills, and for a few
# tiny publishes once it is large.
#
#   scripts/write-amp.sh [STRAIT_BINARY] [MESSAGES] [PAYLOAD_BYTES]
#
# Defaults: target/release/strait, 150000 messages of 1000 bytes (~150 MB queued), the shipped
# single-node settings except the queue bound (raised so the queue can hold them all).
set -euo pipefail
bin=${1:-target/release/strait}
n=${2:-150000}
size=${3:-1000}
port=${PORT:-18830}
dir=$(mktemp -d /tmp/strait-wa.XXXXXX)
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/wa.hocon" <<EOF
node { name = "wa@127.0.0.1", data_dir = "$dir/data" }
listeners.tcp.default { bind = "127.0.0.1:$port" }
api { bind = "127.0.0.1:0" }
mqtt { max_mqueue_len = $((n + 1000)), max_mqueue_bytes = 4GB, session_expiry_interval = 2h }
EOF
"$bin" run --config "$dir/wa.hocon" > "$dir/log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  mosquitto_pub -p "$port" -t probe -m x 2>/dev/null && break
  sleep 0.1
done
written() { awk '/^write_bytes/ {print $2}' "/proc/$pid/io"; }
settle() {
  # Until the process has written nothing for 3 s (its checkpoints are once a second).
  local last now
  last=$(written)
  while sleep 3; now=$(written); [ "$now" != "$last" ]; do last=$now; done
}
mosquitto_sub -p "$port" -c -i offline-device -q 1 -t 'wa/#' -E
settle
w0=$(written)
python3 -c "import sys; line=('x'*($size-1)+'\n'); sys.stdout.write(line*$n)" |
  mosquitto_pub -p "$port" -q 1 -t wa/fill -l
settle
w1=$(written)
# One a second: each lands in its own checkpoint, as a device trickling data would.
for i in $(seq 10); do mosquitto_pub -p "$port" -q 1 -t wa/tiny -m "t$i"; sleep 1.1; done
settle
w2=$(written)
du_data=$(du -sb "$dir/data" | cut -f1)
queued=$((n * size))
awk -v w0="$w0" -v w1="$w1" -v w2="$w2" -v q="$queued" -v du="$du_data" 'BEGIN {
  printf "fill: %.0f MB queued, %.0f MB written: %.2f bytes written per byte queued\n", q/1e6, (w1-w0)/1e6, (w1-w0)/q
  printf "10 tiny publishes afterwards, one a second: %.1f MB written\n", (w2-w1)/1e6
  printf "data directory: %.0f MB\n", du/1e6
}'
