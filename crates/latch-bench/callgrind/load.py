"""Fixed-count load for ir-per-request.sh: `warm` requests, then callgrind's counters are
zeroed, `count` requests are made, and the counters are dumped. 16 keep-alive connections,
so writes still share commits as they do under latch-bench.

Introspection and revocation present latch-bench's preloaded access tokens
(`preload::token("at", i)`), from index `start` on, a distinct one per request; refresh its
refresh tokens (`preload::token("rt", i)`) likewise; issuance is `client_credentials`.

usage: load.py PORT introspect|revoke|issue|refresh START COUNT WARM VALGRIND_PID
"""

import base64
import hashlib
import http.client
import subprocess
import sys
import threading

CLIENTS = {
    "introspect": ("bench-introspector", "bench-introspector-secret"),
    "revoke": ("bench-client", "bench-secret"),
    "issue": ("bench-client", "bench-secret"),
    "refresh": ("bench-client", "bench-secret"),
}
PATHS = {
    "introspect": "/oauth2/introspect",
    "revoke": "/oauth2/revoke",
    "issue": "/oauth2/token",
    "refresh": "/oauth2/token",
}
EXPECTED = {
    "introspect": b'"active":true',
    "revoke": b"",
    "issue": b'"access_token"',
    "refresh": b'"refresh_token"',
}
CONNECTIONS = 16


def token(kind, i):
    digest = hashlib.sha256(f"bench-{kind}-{i}".encode()).digest()
    return f"latch_{kind}_" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def form(kind, i):
    if kind == "issue":
        return "grant_type=client_credentials"
    if kind == "refresh":
        return f"grant_type=refresh_token&refresh_token={token('rt', i)}"
    return f"token={token('at', i)}"


def main():
    port, kind = int(sys.argv[1]), sys.argv[2]
    start, count, warm, pid = (int(a) for a in sys.argv[3:7])
    client_id, secret = CLIENTS[kind]
    headers = {
        "Authorization": "Basic "
        + base64.b64encode(f"{client_id}:{secret}".encode()).decode(),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    failures = []

    def connection(items):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in items:
            c.request("POST", PATHS[kind], body=form(kind, i), headers=headers)
            r = c.getresponse()
            body = r.read()
            if r.status != 200 or EXPECTED[kind] not in body:
                failures.append(f"{r.status} {body[:120]!r}")

    def run(first, n):
        threads = [
            threading.Thread(target=connection, args=(range(first + k, first + n, CONNECTIONS),))
            for k in range(CONNECTIONS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    run(start, warm)
    subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
    run(start + warm, count)
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    if failures:
        sys.exit(f"{len(failures)} requests failed, first: {failures[0]}")


main()
