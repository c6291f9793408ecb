#!/usr/bin/env bash
# CPU time of each latch thread during a benchmark run: time on the core, time waiting for
# it, and time blocked (I/O, locks, nothing to do), from /proc/<pid>/task/*/schedstat.
#
#   [DELAY=14] [WINDOW=4] threads.sh LATCH-BENCH-ARGUMENTS...
#
# Starts latch-bench with the given arguments, waits DELAY seconds after `latch serve` starts
# (by default: past a 10 s ceiling run and into the first workload), then reads every
# thread's counters over WINDOW seconds. The busy share of core 0 is the sum of the threads'
# run times over the window. Run it from the repository root.
set -euo pipefail
bench=${LATCH_BENCH:-target/release/latch-bench}
delay=${DELAY:-14} window=${WINDOW:-4}
"$bench" "$@" >"${THREADS_LOG:-target/threads.log}" 2>&1 &
runner=$!
pid=
for _ in $(seq 1 600); do
  pid=$(pgrep -f "latch[-a-z]* serve" | head -1 || true)
  [ -n "$pid" ] && break
  sleep 0.1
done
[ -n "$pid" ] || { echo "latch serve did not start" >&2; exit 1; }
sleep "$delay"
declare -A before
for task in /proc/"$pid"/task/*; do before[$task]=$(cat "$task/schedstat"); done
sleep "$window"
for task in /proc/"$pid"/task/*; do
  [ -n "${before[$task]:-}" ] || continue
  read -r run wait switches <"$task/schedstat"
  read -r run0 wait0 switches0 <<<"${before[$task]}"
  run_ms=$(((run - run0) / 1000000)) wait_ms=$(((wait - wait0) / 1000000))
  [ $((switches - switches0)) -gt 10 ] || continue
  printf '%-16s run %5d ms  waiting for the core %5d ms  blocked %5d ms\n' \
    "$(cat "$task/comm")" "$run_ms" "$wait_ms" $((window * 1000 - run_ms - wait_ms))
done
wait "$runner"
grep -E "^\| " "${THREADS_LOG:-target/threads.log}" | tail -n +3
