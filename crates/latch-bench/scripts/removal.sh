#!/usr/bin/env bash
# What removing a large client, or logging a large subject out, costs the other writes of
# a server on the same SQLite file.
#
#   removal.sh BINARY DB [cli|api|logout] [downgrade|v13]
#
# DB is a database latch-bench preloaded and kept (--keep-db): its grants all belong to
# bench-client. A copy of it is served by BINARY (`latch serve`, core 0) while one client
# creates tenants through the admin API in a loop (core 1), and bench-client is removed,
# by `latch client remove` (cli, the default) or by the admin API (api); or (logout) every
# grant is made subject bulk's first, and bulk is logged out everywhere through the admin
# API. Prints how long it took and what the other writes got: their statuses, p99 and
# slowest. `downgrade` takes the copy back to schema version 10, for a latch built before
# version 11; `v13` to version 13, for one built before version 14. Run it from the
# repository root, on an otherwise idle machine; it uses port 18080.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
bin=$1 db=$2 how=${3:-cli} down=${4:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$db" "$work/a.db"
if [ "$down" = downgrade ]; then
  python3 -c "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(
    'DROP TABLE client_grant_revocations; DROP TABLE removals; '
    'PRAGMA user_version = 10;')" "$work/a.db"
elif [ "$down" = v13 ]; then
  python3 -c "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(
    'DROP TABLE subject_logouts; PRAGMA user_version = 13;')" "$work/a.db"
fi
if [ "$how" = logout ]; then
  python3 -c "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(
    \"UPDATE grants SET subject = 'bulk';\")" "$work/a.db"
fi
sync
url=sqlite://$work/a.db
# The admin API is called on the one listener.
unset LATCH_OPERATIONS_LISTEN
taskset -c 0 "$bin" serve --database-url "$url" --listen 127.0.0.1:18080 --admin-token tok \
  --log warn >"$work/server.out" 2>&1 &
server=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18080/healthz >/dev/null && break; sleep 0.2; done
# The other writes: tenants created one after another on one keep-alive connection.
taskset -c 1 python3 - "$work/stop" >"$work/load.out" <<'PY' &
import http.client, json, os, sys, time
conn = http.client.HTTPConnection("127.0.0.1", 18080, timeout=60)
statuses, latencies, i = {}, [], 0
while not os.path.exists(sys.argv[1]):
    i += 1
    start = time.monotonic()
    conn.request("POST", "/admin/v1/tenants", json.dumps({"tenant_id": f"t{i}"}),
                 {"Authorization": "Bearer tok", "Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    latencies.append(time.monotonic() - start)
    statuses[response.status] = statuses.get(response.status, 0) + 1
latencies.sort()
print(json.dumps({"statuses": statuses, "writes": len(latencies),
                  "p99_ms": round(latencies[len(latencies) * 99 // 100] * 1000, 1),
                  "slowest_ms": round(latencies[-1] * 1000, 1)}))
PY
load=$!
sleep 1
start=$(date +%s.%N)
if [ "$how" = api ]; then
  curl -s -X DELETE -H "Authorization: Bearer tok" \
    http://127.0.0.1:18080/admin/v1/tenants/default/clients/bench-client >"$work/removal.out"
elif [ "$how" = logout ]; then
  curl -s -X DELETE -H "Authorization: Bearer tok" \
    http://127.0.0.1:18080/admin/v1/tenants/default/subjects/bulk/grants >"$work/removal.out"
else
  taskset -c 1 "$bin" client remove bench-client --database-url "$url" >"$work/removal.out"
fi
end=$(date +%s.%N)
sleep 1
touch "$work/stop"
wait "$load"
kill -TERM "$server"
wait "$server" || true
echo "$how: $(echo "$end - $start" | bc) s, $(cat "$work/removal.out")"
echo "other writes: $(cat "$work/load.out")"
