#!/usr/bin/env bash
# Makes sure dynalite (a fast, in-memory DynamoDB emulator from npm; no transactions)
# answers at $GCDR_DYNALITE_URL (default http://127.0.0.1:8766), installing it under
# .cache/dynalite when missing. Benchmarks only: the tests use moto.
set -euo pipefail
cd "$(dirname "$0")/.."

url="${GCDR_DYNALITE_URL:-http://127.0.0.1:8766}"
port="${url##*:}"
up() { curl -s -o /dev/null -w '%{http_code}' "$url" | grep -q '^[1-5]'; }

if up; then
  echo "ensure-dynalite: dynalite answers at $url"
  exit 0
fi
dir=.cache/dynalite
if [ ! -x "$dir/node_modules/.bin/dynalite" ]; then
  echo "ensure-dynalite: installing dynalite 4.x into $dir"
  mkdir -p "$dir"
  (cd "$dir" && npm init -y >/dev/null && npm install --silent dynalite@4)
fi
echo "ensure-dynalite: starting dynalite on 127.0.0.1:$port"
nohup "$dir/node_modules/.bin/dynalite" --host 127.0.0.1 --port "$port" > .cache/dynalite.log 2>&1 &
for _ in $(seq 1 100); do
  if up; then
    echo "ensure-dynalite: dynalite answers at $url"
    exit 0
  fi
  sleep 0.2
done
echo "ensure-dynalite: dynalite did not start; see .cache/dynalite.log" >&2
exit 1
