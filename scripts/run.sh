#!/usr/bin/env bash
# Installs everything, starts `microvms serve`, and runs the demo against it with the
# stock AWS CLI. The server keeps running in the foreground afterwards (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export MICROVMS_DATA_DIR="${MICROVMS_DATA_DIR:-$HOME/.local/share/microvms}"
export MICROVMS_API_PORT="${MICROVMS_API_PORT:-9600}"
mkdir -p "$MICROVMS_DATA_DIR"
log="$MICROVMS_DATA_DIR/serve.log"
# The server's structured log goes to a file, so the demo's output reads cleanly.
node dist/src/cli/main.js serve >> "$log" 2>&1 &
server=$!
echo "microvms serve: pid $server, log $log"

trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null' EXIT INT TERM

for _ in $(seq 1 600); do # first start: guest initramfs, KVM probe, CA keys
  (echo > "/dev/tcp/127.0.0.1/$MICROVMS_API_PORT") 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "microvms serve exited:" >&2; tail -n 20 "$log" >&2; exit 1; }
  sleep 0.1
done
bash scripts/demo.sh "http://127.0.0.1:$MICROVMS_API_PORT"
echo "microvms is serving on http://127.0.0.1:$MICROVMS_API_PORT, endpoints on port ${MICROVMS_PROXY_PORT:-9601} (log: $log; Ctrl-C to stop)"
wait "$server"
