# Helpers shared by the benchmark scripts (sourced, not run).

# The median of the numbers on stdin, one per line.
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# A fresh dynalite: it keeps every table of every run in memory and slows down (and
# burns more of the two cores) as it grows, which would bias later runs.
restart_dynalite() {
  pkill -f node_modules/.bin/dynalite || true
  sleep 0.5
  bash scripts/ensure-dynalite.sh >/dev/null
}
