#!/usr/bin/env bash
# Makes sure a DynamoDB wire-protocol server (moto) answers at $GCDR_TEST_DYNAMODB_URL
# (default http://127.0.0.1:8765): installs moto[server] into a virtualenv under
# .cache/ when this machine's Python has no moto, starts it in the background through
# scripts/moto-server.py (one request at a time), waits for it. A moto already
# answering there is reused (and reset).
set -euo pipefail
cd "$(dirname "$0")/.."

url="${GCDR_TEST_DYNAMODB_URL:-http://127.0.0.1:8765}"
port="${url##*:}"

if curl -s -o /dev/null -X POST "$url/moto-api/reset"; then
  echo "ensure-dynamodb: moto answers at $url"
  if ! pgrep -f "scripts/moto-server.py 127.0.0.1 $port" >/dev/null; then
    echo "ensure-dynamodb: WARNING: that moto was not started by this script; a threaded" >&2
    echo "  moto_server does not isolate concurrent transactions and the claim tests can" >&2
    echo "  fail. Stop it (pkill -f moto_server) and run this again." >&2
  fi
  exit 0
fi

# The Python that has moto: this machine's, or a virtualenv's made for it.
py=python3
if ! "$py" -c 'import moto.server' >/dev/null 2>&1; then
  venv=.cache/moto-venv
  if [ ! -x "$venv/bin/moto_server" ]; then
    echo "ensure-dynamodb: installing moto[server] into $venv (~25 s)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'moto[server]>=5,<6'
  fi
  py="$venv/bin/python"
fi

mkdir -p .cache
# Not moto_server itself: scripts/moto-server.py serves one request at a time, so
# concurrent transactions are isolated as on DynamoDB (see that file).
echo "ensure-dynamodb: starting moto (scripts/moto-server.py) on 127.0.0.1:$port"
nohup "$py" scripts/moto-server.py 127.0.0.1 "$port" > .cache/moto.log 2>&1 &
for _ in $(seq 1 100); do
  if curl -s -o /dev/null -X POST "$url/moto-api/reset"; then
    echo "ensure-dynamodb: moto answers at $url"
    exit 0
  fi
  sleep 0.2
done
echo "ensure-dynamodb: moto did not start; see .cache/moto.log" >&2
exit 1
