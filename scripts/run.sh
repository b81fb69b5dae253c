#!/usr/bin/env bash
# Runs the service against local PostgreSQL (started or installed if needed), in
# release mode. Configuration comes from the environment (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
exec cargo run --release --bin gcdr-data -- serve
