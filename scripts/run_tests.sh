#!/usr/bin/env bash
# Run the whole suite in .venv. pytest's exit code 5 (no tests collected) is a failure here.
set -uo pipefail
cd "$(dirname "$0")/.."
# Keep the temporary folders of failed tests only: a passing suite leaves ~13 GB there otherwise,
# and pytest keeps the last three runs.
.venv/bin/python -m pytest -o tmp_path_retention_policy=failed "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run_tests: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
