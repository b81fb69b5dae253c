#!/usr/bin/env bash
# Benchmark: `gcdr-data backfill` next to the two raw rates it is bounded by, from the
# same run: a raw parallel Scan of the same legacy tables, and PostgreSQL's raw batch
# upsert (1,000-row INSERT ... ON CONFLICT DO UPDATE); and, as a measure of the backfill's
# own cost, a raw copy (the same Scan feeding the same upsert with nothing else, foreign
# keys off, sharing the machine with the emulator as the backfill does), and the
# backfill itself with foreign keys off, which prices the schema's checks. Source:
# dynalite (npm; moto is too slow for 100,000 items). Also the backfill's peak RSS at
# each size, which must not grow with the table, and its RSS every half second.
#
#   bash scripts/bench-backfill.sh                 # 10,000 and 100,000 items
#   SIZES="100000" SEGMENTS=4 PAGE=1000 bash scripts/bench-backfill.sh
#   TENANTS=1000 bash scripts/bench-backfill.sh    # many small tenants (default 4 large)
#   REPEAT=5 bash scripts/bench-backfill.sh        # alternations of raw runs and backfill (3)
#   PROFILE=1 bash scripts/bench-backfill.sh       # and one more backfill under `perf record -a`
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
bash scripts/ensure-postgres.sh
bash scripts/ensure-dynalite.sh
cargo build --release --quiet --bins

SIZES=${SIZES:-10000 100000}
SEGMENTS=${SEGMENTS:-4}
PAGE=${PAGE:-500}  # the backfill's own default
# A tenant's items share a partition key, so one Scan segment reads them in id order:
# with few large tenants, children often come before their parents and are deferred
# (about 35% of customers and assets with 4); tenants smaller than a page are not.
TENANTS=${TENANTS:-4}
REPEAT=${REPEAT:-3}
if [ "${PROFILE:-0}" = 1 ] && ! command -v perf >/dev/null; then
  echo "bench-backfill: PROFILE=1 needs perf (Debian: apt-get install linux-perf) and root" >&2
  exit 1
fi
out=$(mktemp)
prof=$(mktemp)
trap 'rm -f "$out" "$prof" "$prof.old" "$prof.rss"' EXIT
DB=gcdr_bench_backfill
export DYNAMODB_ENDPOINT=${GCDR_DYNALITE_URL:-http://127.0.0.1:8766}
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB RUST_LOG=warn
BIN=./target/release/gcdr-data
LOAD=./target/release/gcdr-load
psql_() { psql -h 127.0.0.1 -U postgres -d postgres -Atq "$@"; }
# An empty database $1 (any earlier one dropped); further arguments run after its creation.
fresh_db() { local name=$1; shift; psql_ -c "DROP DATABASE IF EXISTS $name" -c "CREATE DATABASE $name" "$@"; }
# CPU seconds of dynalite ($dpid, from its /proc ticks) and of the whole machine.
ticks() { awk '{print $14 + $15}' "/proc/$dpid/stat"; }
machine() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
hz=$(getconf CLK_TCK)
# Runs a command ($2...) and says where the CPU went meanwhile: the command's own
# (with its peak RSS), dynalite's, and the rest of the machine's, which is mostly
# PostgreSQL's. Its output and the figures go to $out.
cpu_of() {
  local label=$1 d0 m0 own rss user sys wall
  shift
  own=$(mktemp)
  d0=$(ticks); m0=$(machine)
  /usr/bin/time -o "$own" -f "%M %U %S %e" "$@" 2>&1 | tee -a "$out"
  read -r rss user sys wall < "$own"
  rm -f "$own"
  awk -v d=$(( $(ticks) - d0 )) -v m=$(( $(machine) - m0 )) -v hz="$hz" -v l="$label" \
    -v rss="$rss" -v u="$user" -v s="$sys" -v w="$wall" 'BEGIN {
      printf "%s peak RSS: %d KB, wall %.2f s; CPU: its own %.1f s, dynalite %.1f s, PostgreSQL and the rest %.1f s (whole machine %.1f s)\n",
        l, rss, w, u + s, d / hz, m / hz - d / hz - u - s, m / hz }' | tee -a "$out"
}
# The RSS of the backfill (the newest gcdr-data process, waited for) every half second
# until it ends: memory that grows with the run's time, not its size, shows as the same
# figures at the same second in runs of any size.
rss_trace() {
  local pid="" samples=""
  for _ in $(seq 1 200); do
    pid=$(pgrep -n -x gcdr-data || true)
    [ -n "$pid" ] && break
    sleep 0.01
  done
  [ -n "$pid" ] || return 0
  while [ -r "/proc/$pid/status" ]; do
    samples="$samples $(awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status" 2>/dev/null)"
    sleep 0.5
  done
  echo "backfill RSS every 0.5 s (MB):$samples"
}
# The median of the rates (items/s or rows/s) on the lines of $out that match $1.
rate() { grep "$1" "$out" | sed -E 's/.*[ (]([0-9]+) (items|rows)\/s.*/\1/' | median; }

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
for size in $SIZES; do
  # A fresh dynalite per size: it keeps every table of every run in memory and its
  # scans slow down (and burn more of the two cores) as it grows.
  restart_dynalite
  dpid=$(pgrep -f node_modules/.bin/dynalite | head -1)
  export GCDR_STAGE="bf${size}x$$"
  $BIN dynamodb create-tables >/dev/null
  echo
  echo "== $size legacy items of $TENANTS tenants (dynalite at $DYNAMODB_ENDPOINT, stage $GCDR_STAGE)"
  $LOAD seed-legacy --items "$size" --tenants "$TENANTS"
  # The machine is shared and noisy (a single run's ratio ranged 0.77-0.99x), so the
  # raw runs and the backfill alternate REPEAT times and the medians are compared.
  : > "$out"
  for rep in $(seq 1 "$REPEAT"); do
    echo "-- repetition $rep of $REPEAT"
    $LOAD scan-legacy --segments "$SEGMENTS" --page-size "$PAGE" | tee -a "$out"
    # In a scratch database: the raw runs' deleted rows must not slow the backfill's
    # tables (dead tuples, autovacuum running during the backfill).
    fresh_db "${DB}_raw"
    $LOAD pg-upsert --rows "$size" --database-url "postgres://postgres@127.0.0.1:5432/${DB}_raw" | tee -a "$out"
    # The same Scan feeding the same upsert with nothing else, sharing the machine with
    # the emulator as the backfill does: the backfill's ratio to it is its own cost.
    fresh_db "${DB}_raw"
    cpu_of "raw copy" $LOAD raw-copy --segments "$SEGMENTS" --page-size "$PAGE" \
      --database-url "postgres://postgres@127.0.0.1:5432/${DB}_raw"
    psql_ -c "DROP DATABASE ${DB}_raw"
    # Each backfill into a fresh database.
    fresh_db "$DB"
    $BIN migrate
    rss_trace > "$prof.rss" &
    cpu_of backfill $BIN backfill run --segments "$SEGMENTS" --page-size "$PAGE" --progress lines \
      --progress-interval "${PROGRESS_INTERVAL:-5}"
    wait
    tee -a "$out" < "$prof.rss"
    $BIN verify --segments "$SEGMENTS" | tail -1
    # The same backfill with foreign keys off (a scratch database; superuser): what the
    # schema's foreign-key checks cost it. The raw upsert of root customers checks none;
    # the raw upsert of the same rows checks the same ones the backfill does.
    fresh_db "${DB}_nofk" -c "ALTER DATABASE ${DB}_nofk SET session_replication_role = replica"
    nofk_url="postgres://postgres@127.0.0.1:5432/${DB}_nofk"
    DATABASE_URL=$nofk_url $BIN migrate
    DATABASE_URL=$nofk_url $BIN backfill run --run-id nofk --segments "$SEGMENTS" \
      --page-size "$PAGE" --progress none | grep "^run nofk" | tee -a "$out"
    psql_ -c "DROP DATABASE ${DB}_nofk"
  done
  scan=$(rate "raw parallel Scan")
  root=$(rate "root customers")
  mix=$(rate "the seeded mix")
  copy=$(rate "^raw copy (")
  ours=$(rate "run backfill")
  nofk=$(rate "^run nofk")
  rss=$(grep "^backfill peak RSS" "$out" | sed -E 's/.*RSS: ([0-9]+) KB.*/\1/' | sort -n | tail -1)
  echo "== $size items, medians of $REPEAT: backfill $ours items/s; raw Scan $scan items/s; \
raw upsert of the same rows $mix rows/s, of root customers $root rows/s; raw copy $copy items/s; \
backfill with foreign keys off $nofk items/s"
  awk -v o="$ours" -v s="$scan" -v m="$mix" -v r="$root" -v c="$copy" -v n="$nofk" -v rss="$rss" 'BEGIN {
    printf "== backfill / raw Scan %.2fx, / raw upsert of the same rows %.2fx, / of root customers %.2fx, / raw copy %.2fx; peak RSS %.1f MB\n",
      o / s, o / m, o / r, o / c, rss / 1024
    printf "== backfill with foreign keys off / raw upsert of root customers %.2fx (with them %.2fx)\n", n / r, o / r }'
  if [ "${PROFILE:-0}" = 1 ]; then
    # Where the machine's CPU goes during one more backfill (not in the medians: perf
    # slows it): the share of each process, and PostgreSQL's main costs.
    fresh_db "$DB"
    $BIN migrate
    perf record -q -a -g -F 499 -o "$prof" -- $BIN backfill run --segments "$SEGMENTS" \
      --page-size "$PAGE" --progress none | grep "^run backfill"
    share() { perf report -i "$prof" "$@" --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$'; }
    share --no-children --sort comm | awk '
      { pct = $1 + 0; $1 = ""; sub(/^ +/, ""); who[$0] += pct }
      END {
        printf "== profile of the machine during one backfill: PostgreSQL %.1f%%, dynalite %.1f%%, backfill %.1f%%, idle %.1f%%, rest %.1f%%\n",
          who["postgres"], who["node"], who["gcdr-data"] + who["tokio-rt-worker"], who["swapper"],
          100 - who["postgres"] - who["node"] - who["gcdr-data"] - who["tokio-rt-worker"] - who["swapper"] }'
    share --children --comm postgres --sort sym | awk '
      $NF == "ExecInsertIndexTuples" { i = $1 } $NF == "AfterTriggerEndQuery" { f = $1 }
      $NF == "analyze_rel" { a = $1 }
      END { printf "== in PostgreSQL (%% of the machine): index inserts %s, foreign-key checks %s, ANALYZE %s\n", i, f, a }'
  fi
  $LOAD drop-legacy
done
