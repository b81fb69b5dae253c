#!/usr/bin/env bash
# Benchmark: the cost of dual write. For each storage mode (postgres,
# dual_postgres_primary, dynamodb, dual_dynamodb_primary) it starts a fresh server (fresh
# PostgreSQL database, fresh legacy tables on the DynamoDB emulator), then measures
# CreateCustomer and GetCustomer latency at a paced load, and finally how long the
# replicator took to drain (the secondary's row count catching up with the primary's).
#
#   bash scripts/bench-dual.sh                     # 15 s per measurement, 100 calls/s
#   REPEAT=5 EMULATOR=dynalite EMULATOR_NICE=idle MODES="postgres dual_postgres_primary" \
#     SECONDS_PER_RUN=30 bash scripts/bench-dual.sh
#       # the modes alternate REPEAT times; the end compares the medians (one run's p99
#       # swings by +-40% on this shared machine, so one pair of runs proves little)
#   SECONDS_PER_RUN=30 RATE=200 bash scripts/bench-dual.sh
#   EMULATOR=dynalite MODES="postgres dual_postgres_primary" bash scripts/bench-dual.sh
#       # the faster emulator (npm); it has no TransactWriteItems, which a DynamoDB-primary
#       # create needs (the customer-code claim), so only the PostgreSQL-primary modes
#   MODES="postgres dual_postgres_primary" bash scripts/bench-dual.sh
#   RATE=5 SECONDS_PER_RUN=30 MODES="dynamodb dual_dynamodb_primary" bash scripts/bench-dual.sh
#       # DynamoDB authoritative, on moto: a create is a gsi-code query (a scan of the
#       # table on moto) and a transaction; above ~10 creates/s moto only queues
#
# The default emulator is moto (~500 PutItem/s here, and its index queries scan the
# table): the paced rate must stay below what it sustains, or a mode just measures
# moto's queue. Both emulators share the 2 cores with the server and PostgreSQL, so the
# CPU they burn on the copies shows up in the dual modes' latency too (in production
# DynamoDB is not on the service's host). Compare each dual mode with the single mode
# of its authoritative store, from the same run.
#
# dynalite is restarted before each mode (it keeps every table of every run in memory
# and slows down as it grows, which would bias later runs). EMULATOR_NICE=19 runs the
# emulator at that CPU priority, so that its own work on the copies yields to the
# server and PostgreSQL (closer to a remote DynamoDB); EMULATOR_NICE=idle runs it only
# when nothing else wants the CPU (SCHED_IDLE: a waking server or PostgreSQL process
# preempts it at once, where a niced one still finishes its time slice); the default
# is 0.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
bash scripts/ensure-postgres.sh
if [ "${EMULATOR:-moto}" = dynalite ]; then
  bash scripts/ensure-dynalite.sh
  DYNAMO=${GCDR_DYNALITE_URL:-http://127.0.0.1:8766}
else
  bash scripts/ensure-dynamodb.sh
  DYNAMO=${GCDR_TEST_DYNAMODB_URL:-http://127.0.0.1:8765}
fi
cargo build --release --quiet --bins

DUR=${SECONDS_PER_RUN:-15}
RATE=${RATE:-100}
CONC=${CONCURRENCY:-8}
DB=gcdr_bench_dual
ADDR=127.0.0.1:50062
LOAD=./target/release/gcdr-load
BIN=./target/release/gcdr-data
T=bench-dual
tmp=$(mktemp -d)
trap 'kill "${server:-0}" 2>/dev/null || true; [ -n "${KEEP_LOGS:-}" ] && echo "logs in $tmp" || rm -rf "$tmp"' EXIT
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
echo "== $RATE calls/s offered over $CONC workers, $DUR s per measurement, emulator $DYNAMO"
MODES=${MODES:-postgres dual_postgres_primary dynamodb dual_dynamodb_primary}
REPEAT=${REPEAT:-1}
results="$tmp/results"   # lines: mode op p50 p99
n=0
emulator_pid() { pgrep -f "$1" | head -1; }
# The latency figures of one gcdr-load run as "p50 p99", appended to $results.
record() { sed -nE 's/.* p50=([0-9.]+)ms p99=([0-9.]+)ms.*/\1 \2/p' | tail -1 | sed "s/^/$1 $2 /" >>"$results"; }
# The median of column $3 (3: p50, 4: p99) of mode $1's op $2.
med() { awk -v m="$1" -v o="$2" -v c="$3" '$1 == m && $2 == o { print $c }' "$results" | median; }
for _ in $(seq 1 "$REPEAT"); do
  for mode in $MODES; do
    n=$((n + 1))
    if [ "${EMULATOR:-moto}" = dynalite ]; then
      restart_dynalite
    fi
    if [ "${EMULATOR_NICE:-0}" != 0 ]; then
      pattern=$([ "${EMULATOR:-moto}" = dynalite ] && echo node_modules/.bin/dynalite || echo moto-server.py)
      # Every thread: a priority is per thread on Linux, and node's and Python's helper
      # threads (garbage collection, I/O) would otherwise keep the default.
      for task in /proc/"$(emulator_pid "$pattern")"/task/*; do
        if [ "$EMULATOR_NICE" = idle ]; then
          chrt --idle -p 0 "${task##*/}"
        else
          renice -n "$EMULATOR_NICE" -p "${task##*/}" >/dev/null
        fi
      done
    fi
    stage="benchdual$n$$"
    psql -h 127.0.0.1 -U postgres -d postgres -q -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
    env=(PGDATABASE=$DB DYNAMODB_ENDPOINT=$DYNAMO GCDR_STAGE=$stage GCDR_STORAGE_MODE=$mode
         GCDR_LISTEN_ADDR=$ADDR RUST_LOG=warn)
    env "${env[@]}" $BIN dynamodb create-tables >/dev/null
    env "${env[@]}" $BIN serve >"$tmp/server-$mode.log" 2>&1 &
    server=$!
    for _ in $(seq 1 100); do
      $LOAD run --addr http://$ADDR --tenant $T --op list --concurrency 1 --seconds 0.1 \
        --warmup-seconds 0 >/dev/null 2>&1 && break
      sleep 0.2
    done
    echo
    echo "== mode $mode"
    $LOAD run --addr http://$ADDR --tenant $T --op create --concurrency "$CONC" --connections 1 \
      --rate "$RATE" --seconds "$DUR" --warmup-seconds 2 | tee "$tmp/run"
    record "$mode" create <"$tmp/run"
    $LOAD run --addr http://$ADDR --tenant $T --op get --concurrency "$CONC" --connections 1 \
      --rate "$RATE" --seconds "$DUR" --warmup-seconds 1 | tee "$tmp/run"
    record "$mode" get <"$tmp/run"
    kill -TERM $server && wait $server || true   # a clean stop flushes the replicator
    pg=$(psql -h 127.0.0.1 -U postgres -d $DB -Atq -c "SELECT count(*) FROM customers WHERE tenant_id = '$T'")
    echo "customers in PostgreSQL after stop: $pg"
  done
done

echo
echo "== medians of $REPEAT run(s) per mode (ms)"
for mode in $MODES; do
  for op in create get; do
    printf '%-24s %-7s p50 %7s  p99 %7s\n' "$mode" "$op" "$(med "$mode" $op 3)" "$(med "$mode" $op 4)"
  done
done
# Each dual mode against the single mode of its authoritative store (target: writes at
# most 1.3x, reads 1.0x).
for pair in "dual_postgres_primary postgres" "dual_dynamodb_primary dynamodb"; do
  set -- $pair
  case " $MODES " in *" $1 "*) ;; *) continue ;; esac
  case " $MODES " in *" $2 "*) ;; *) continue ;; esac
  for op in create get; do
    awk -v a50="$(med "$1" $op 3)" -v b50="$(med "$2" $op 3)" -v a99="$(med "$1" $op 4)" \
      -v b99="$(med "$2" $op 4)" -v what="$1 / $2 $op" \
      'BEGIN { printf "== %s: p50 %.2fx, p99 %.2fx\n", what, a50 / b50, a99 / b99 }'
  done
done
