#!/usr/bin/env bash
# Runs the whole test suite: unit, store (SQLite and PostgreSQL), API, conformance.
# Installs what it needs first (scripts/setup.sh) and starts a throwaway PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pg_dir=$(mktemp -d /tmp/microvms-pg.XXXXXX)
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  # PostgreSQL refuses to run as root.
  chown postgres:postgres "$pg_dir"
  as_pg=(runuser -u postgres --)
fi
pg_port=$(node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")
stop_pg() {
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$pg_dir"
}
trap stop_pg EXIT
"${as_pg[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U microvms >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_dir -c fsync=off" start >/dev/null
export MICROVMS_TEST_DATABASE_URL="postgres://microvms@127.0.0.1:$pg_port/postgres"

# Node 20's runner takes files, not globs: every compiled *.test.js under dist/test.
mapfile -t tests < <(find dist/test -name '*.test.js' | sort)
# A test that hangs fails after 10 minutes instead of holding CI until its limit.
node --test --test-concurrency=2 --test-timeout=600000 "${tests[@]}"
