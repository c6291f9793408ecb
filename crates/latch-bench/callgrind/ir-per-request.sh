#!/usr/bin/env bash
# Instructions (user space) per request of one latch binary, counted by callgrind: unlike
# requests per second, the count does not drift with the shared machine, so two builds can be
# compared in one run each. The kernel's share (syscalls, TCP) is not counted, and valgrind
# hides SHA-NI, so SHA-256 runs in software and weighs about 25k instructions per request
# more than it does natively. See docs/benchmarks.md.
#
# usage: ir-per-request.sh LATCH_BINARY DATABASE introspect|revoke|issue|refresh [COUNT] [START]
#
# DATABASE is one latch-bench preloaded and kept, e.g.
#   target/release/latch-bench --tokens 1000000 --duration 2 --workloads introspect \
#     --keep-db --db target/b/k1m.db --out /tmp/b
# A revoke, issue or refresh run works on a copy, so the kept database is never changed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
latch=$1 db=$2 kind=$3 count=${4:-3000} start=${5:-100000}
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
if [ "$kind" != introspect ]; then
  cp "$db" "$work/db"
  # A kept database that later runs wrote to may have committed pages only in its WAL; the
  # copy needs them (and no stale -shm, which SQLite rebuilds from the WAL).
  [ -f "$db-wal" ] && cp "$db-wal" "$work/db-wal"
  db=$work/db
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.%p" \
  "$latch" serve --listen "127.0.0.1:$port" --database-url "sqlite://$db" --log warn \
  --cleanup-interval 0 >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 240); do
  curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.5
done
python3 "$here/load.py" "$port" "$kind" "$start" "$count" 500 "$server"
dump=$(ls -t "$work"/callgrind.*.* | head -n1)
ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
cp "$dump" "${OUT:-/tmp}/callgrind.$kind.$(basename "$latch").out"
echo "$kind: $((ir / count)) instructions per request ($count requests; profile in ${OUT:-/tmp}/callgrind.$kind.$(basename "$latch").out)"
