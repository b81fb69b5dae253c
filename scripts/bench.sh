#!/usr/bin/env bash
# Benchmark: gcdr-data over gRPC next to raw PostgreSQL (pgbench, psql) in one run.
#
#   bash scripts/bench.sh            # 10 s per measurement
#   SECONDS_PER_RUN=30 bash scripts/bench.sh
#
# Seeds a 100,000-customer tenant (with a 1,000- and a 10,000-node subtree) into the
# database gcdr_bench, starts the release server on 127.0.0.1:50061, and reports
# throughput and p50/p99 for GetCustomer, ListCustomers, ListCustomerDescendants and
# MoveCustomer, the same queries through pgbench/psql, AuthorizationService.Check on
# a separate 10,001-customer tenant, and the server's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
cargo build --release --quiet --bins

DUR=${SECONDS_PER_RUN:-10}
CONC=${CONCURRENCY:-32}
DB=gcdr_bench
URL=postgres://postgres@127.0.0.1:5432/$DB
ADDR=127.0.0.1:50061
LOAD=./target/release/gcdr-load
PSQL="psql -h 127.0.0.1 -U postgres -d $DB -Atq"
PGB="pgbench -h 127.0.0.1 -U postgres -n -M prepared -j 2"
T=bench
tmp=$(mktemp -d)
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$tmp"' EXIT

echo "== seeding 100,000 customers into $DB"
eval "$($LOAD seed --database-url "$URL" --tenant $T --customers 100000)"   # sets r1k r10k spare
$LOAD seed-authz --database-url "$URL" --tenant authz >/dev/null
# Settle the fresh rows first, so background vacuum and checkpoints do not land on
# whichever measurement comes first.
$PSQL -c "VACUUM ANALYZE" && $PSQL -c "CHECKPOINT"

PGDATABASE=$DB GCDR_LISTEN_ADDR=$ADDR RUST_LOG=warn ./target/release/gcdr-data serve >"$tmp/server.log" 2>&1 &
server=$!
for _ in $(seq 1 50); do grpc_ok=$($LOAD run --addr http://$ADDR --op list --concurrency 1 --seconds 0.2 --warmup-seconds 0 2>/dev/null | grep -c op= || true); [ "$grpc_ok" = 1 ] && break; sleep 0.2; done

pgbench_line() { # clients script -> "tps=… p50=… p99=…" (percentiles from pgbench's per-transaction log)
  rm -f "$tmp"/pgbench_log*
  local tps
  tps=$(cd "$tmp" && $PGB -c "$1" -T "$DUR" -l --log-prefix=pgbench_log -f "$2" $DB 2>&1 | awk '/^tps/ {print $3}')
  cat "$tmp"/pgbench_log* | awk '{print $3}' | sort -n | awk -v tps="$tps" '
    {v[NR]=$1} END {printf "tps=%.1f p50=%.3fms p99=%.3fms\n", tps, v[int(NR*0.5)]/1000, v[int(NR*0.99)]/1000}'
}

echo
echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
echo "== GetCustomer at $CONC in flight (random customer of 100,000)"
$LOAD run --addr http://$ADDR --tenant $T --op get --concurrency "$CONC" --connections 1 --seconds "$DUR"
cat >"$tmp/pk.sql" <<SQL
\set n random(1, 88998)
SELECT * FROM customers WHERE tenant_id = '$T' AND id = md5('$T-flat-' || :n)::uuid;
SQL
echo "pgbench prepared primary-key SELECT, $CONC clients: $(pgbench_line "$CONC" "$tmp/pk.sql")"

echo
echo "== ListCustomers (page of 50) at $CONC in flight"
$LOAD run --addr http://$ADDR --tenant $T --op list --concurrency "$CONC" --connections 1 --seconds "$DUR"

for name in r1k r10k; do
  root=${!name}
  path=$($PSQL -c "SELECT path FROM customers WHERE tenant_id = '$T' AND id = '$root'")
  rows=$([ $name = r1k ] && echo 1000 || echo 10000)
  echo
  echo "== ListCustomerDescendants of a $rows-node subtree (pages of 1,000), 4 in flight"
  $LOAD run --addr http://$ADDR --tenant $T --op descendants --root "$root" --concurrency 4 --connections 1 --seconds "$DUR"
  cat >"$tmp/desc.sql" <<SQL
SELECT *, type AS type_ FROM customers WHERE tenant_id = '$T' AND path > '$path/' AND path < '${path}0' AND depth <= 2147483647 ORDER BY path LIMIT $((rows + 1));
SQL
  echo "pgbench same SQL fetching the $rows rows, 4 clients: $(pgbench_line 4 "$tmp/desc.sql")"
done

echo
echo "== MoveCustomer of the 10,000-node subtree (10,001 rows rewritten), one at a time"
$LOAD run --addr http://$ADDR --tenant $T --op move --root "$r10k" --parents "$spare" "$r1k" --seconds "$DUR" --warmup-seconds 1
# Put it back at a known place, then time the raw UPDATE the store runs, rolled back.
old=$($PSQL -c "SELECT path FROM customers WHERE tenant_id = '$T' AND id = '$r10k'")
new=$($PSQL -c "SELECT path FROM customers WHERE tenant_id = '$T' AND id = '$spare'")/$r10k
raw=()
for _ in 1 2 3; do
  ms=$($PSQL <<SQL | awk '/^Time:/ && $2 > t {t=$2} END {print t}'
\timing on
BEGIN;
UPDATE customers SET path = '$new' || substr(path, $(( ${#old} + 1 ))), depth = depth + 1, version = version + 1,
  updated_at = now(), updated_by = 'bench' WHERE tenant_id = '$T' AND path >= '$old' AND path < '${old}0';
ROLLBACK;
SQL
)
  raw+=("$ms")
done
echo "raw single UPDATE of the same 10,001 rows (psql, rolled back), 3 runs: ${raw[*]} ms"

echo
echo "== AuthorizationService.Check at $CONC in flight (user with 5 assignments, 10,001-customer tenant)"
$LOAD run --addr http://$ADDR --tenant authz --op check --concurrency "$CONC" --connections 1 --seconds "$DUR"

echo
echo "== server peak RSS: $(awk '/VmHWM/ {printf "%.1f MB", $2/1024}' /proc/$server/status)"
