#!/usr/bin/env bash
# The whole test suite, with all set-up, on a fresh machine of this project's kind:
# PostgreSQL (started or installed), buf (for the proto lint), then formatting, clippy,
# the proto lint and every test (unit and integration, against real servers).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-postgres.sh
bash scripts/ensure-dynamodb.sh

if ! command -v buf >/dev/null; then
  echo "test.sh: installing buf from the npm registry"
  npm install -g --silent @bufbuild/buf >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --check
echo "== buf lint"
(cd proto && buf lint)
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --all-targets "$@"
