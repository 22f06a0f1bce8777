#!/usr/bin/env bash
# Installs everything, starts `microvms serve`, and runs the demo against it with the
# stock AWS CLI. The server keeps running in the foreground afterwards (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export MICROVMS_DATA_DIR="${MICROVMS_DATA_DIR:-$HOME/.local/share/microvms}"
export MICROVMS_API_PORT="${MICROVMS_API_PORT:-9600}"
node dist/src/cli/main.js serve &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null' EXIT INT TERM

for _ in $(seq 1 100); do
  (echo > "/dev/tcp/127.0.0.1/$MICROVMS_API_PORT") 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "microvms serve exited" >&2; exit 1; }
  sleep 0.1
done
bash scripts/demo.sh "http://127.0.0.1:$MICROVMS_API_PORT"
echo "microvms is serving on http://127.0.0.1:$MICROVMS_API_PORT (Ctrl-C to stop)"
wait "$server"
