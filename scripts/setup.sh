#!/usr/bin/env bash
# Create .venv and install mmlake into it, from a bare checkout.
#   scripts/setup.sh          core + the DuckDB shell (enough for ingest/phash/dedup/export/sql/demo)
#   scripts/setup.sh --dev    + models (torch, transformers), notebooks, test tools
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install -q -e '.[dev,shell]'
else
  .venv/bin/python -m pip install -q -e '.[shell]'
fi
# The lance extension for the duckdb 1.5.5 CLI; its wheel pins the duckdb *Python* package to 1.5.5,
# which would replace our duckdb 2.0, so it is installed without dependencies.
.venv/bin/python -m pip install -q --no-deps 'duckdb-extension-lance==1.5.5'
