#!/usr/bin/env bash
# Makes sure a DynamoDB wire-protocol server (moto) answers at $GCDR_TEST_DYNAMODB_URL
# (default http://127.0.0.1:8765): installs moto[server] into a virtualenv under
# .cache/ when no moto_server is on PATH, starts it in the background, waits for it.
set -euo pipefail
cd "$(dirname "$0")/.."

url="${GCDR_TEST_DYNAMODB_URL:-http://127.0.0.1:8765}"
port="${url##*:}"

if curl -s -o /dev/null -X POST "$url/moto-api/reset"; then
  echo "ensure-dynamodb: moto answers at $url"
  exit 0
fi

moto="$(command -v moto_server || true)"
if [ -z "$moto" ] || ! "$moto" --help >/dev/null 2>&1; then
  venv=.cache/moto-venv
  if [ ! -x "$venv/bin/moto_server" ]; then
    echo "ensure-dynamodb: installing moto[server] into $venv (~25 s)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'moto[server]>=5,<6'
  fi
  moto="$venv/bin/moto_server"
fi

mkdir -p .cache
echo "ensure-dynamodb: starting $moto on 127.0.0.1:$port"
nohup "$moto" -H 127.0.0.1 -p "$port" > .cache/moto.log 2>&1 &
for _ in $(seq 1 100); do
  if curl -s -o /dev/null -X POST "$url/moto-api/reset"; then
    echo "ensure-dynamodb: moto answers at $url"
    exit 0
  fi
  sleep 0.2
done
echo "ensure-dynamodb: moto did not start; see .cache/moto.log" >&2
exit 1
