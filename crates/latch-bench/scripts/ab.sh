#!/usr/bin/env bash
# Interleaved A/B runs of latch binaries on copies of one preloaded SQLite database, or on a
# PostgreSQL database preloaded afresh for each run.
#
#   ab.sh ROUNDS WORKLOADS DB NAME=BINARY[,VAR=VALUE...] NAME=BINARY[,VAR=VALUE...] ...
#
# DB is a database latch-bench preloaded and kept (--keep-db). Every run starts from a fresh
# copy of it (with its WAL, if any), so each binary sees the same data and consumes the same
# tokens; the copy's stale -wal and -shm files are removed first (SQLite would replay a
# leftover WAL into the new copy and corrupt it). A postgres:// URL as DB instead: every run
# preloads that database afresh (AB_TOKENS grants, 1,000,000 unless set). VAR=VALUE pairs
# are put in the environment of that run (for experiment switches). Prints one line per
# workload and run. Run it from the repository root, on an otherwise idle machine, no build
# running.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
rounds=$1 workloads=$2 db=$3
shift 3
bench=${LATCH_BENCH:-target/release/latch-bench}
work=${AB_DIR:-target/ab}
mkdir -p "$work"
copy=$work/ab.db
for round in $(seq 1 "$rounds"); do
  for variant in "$@"; do
    name=${variant%%=*} rest=${variant#*=}
    binary=${rest%%,*} envs=()
    [ "$rest" != "$binary" ] && IFS=, read -r -a envs <<<"${rest#*,}"
    if [[ $db == postgres://* ]]; then
      # A fresh preload each run, ending with a checkpoint (`preload_pg.rs`).
      db_args=(--postgres "$db" --tokens "${AB_TOKENS:-1000000}")
    else
      rm -f "$copy" "$copy-wal" "$copy-shm"
      cp "$db" "$copy" && cp "$db.state.json" "$copy.state.json"
      [ -f "$db-wal" ] && cp "$db-wal" "$copy-wal"
      # Written back before the run: otherwise the kernel writes the copy's dirty pages back
      # during it, and the first checkpoint's fsync of the database waits for all of them
      # (issuance at 1M: the writer's own checkpoints 0.86-0.90 s of 8 against 0.16 s).
      sync
      db_args=(--keep-db --db "$copy")
    fi
    log=$work/$name-$round.log
    env "${envs[@]}" "$bench" --duration "${AB_DURATION:-8}" --wait-idle 10 "${db_args[@]}" \
      --out "$work" --workloads "$workloads" --latch "$binary" >"$log" 2>&1
    grep -E "^\| ($(tr , '|' <<<"$workloads")) " "$log" |
      awk -F'|' -v n="$name" -v r="$round" '{ printf "%-8s round %s %-11s req/s %7d  x ceiling %s (CPU %s)  p50 %s  p99 %s (corrected %s)  errors %s  server us/req %s\n", n, r, $2, $3, $4, $5, $6, $7, $8, $9, $12 }'
  done
done
