#!/usr/bin/env bash
# CI: a fast subset of the tests on each supported Python other than .venv's (README "Python versions").
# Each gets its own venv (.venv-3.X, built by scripts/setup_env.sh like .venv; idempotent). A version
# not installed on the machine is skipped with a line saying so; so is one that would start after
# FAST_PY_BUDGET_S seconds of this CI run (SECONDS counts from the CI script's start when exported),
# so that the whole run stays well under CI's 90 minutes. Under CI=true each extra venv is removed after its
# subset (disk: scripts/setup_env.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
SUPPORTED="3.11 3.12 3.13"
BUDGET=${FAST_PY_BUDGET_S:-2400}
START=${CI_STARTED_AT:-$(date +%s)}
FAST=(tests/test_environment.py tests/test_layers.py tests/mast/test_config.py tests/mast/test_loss.py tests/mast/test_augment.py
      tests/transfer/backbones/test_checkpoints.py tests/transfer/backbones/test_layouts.py tests/transfer/backbones/test_convert.py tests/transfer/backbones/test_safe_files.py
      tests/transfer/backbones/test_cifar_stem.py tests/plumbing/test_lock.py tests/transfer/test_stats.py)

find_python() {  # a python3.X that runs: on PATH, else a pyenv version (pyenv's shims run only the active one)
  local v=$1 p
  if command -v "python$v" >/dev/null 2>&1 && "python$v" -c 'import sys' >/dev/null 2>&1; then echo "python$v"; return 0; fi
  for p in "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/"$v".*/bin/"python$v"; do
    [ -x "$p" ] && "$p" -c 'import sys' >/dev/null 2>&1 && { echo "$p"; return 0; }
  done
  return 1
}

main=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
rc=0
for v in $SUPPORTED; do
  [ "$v" = "$main" ] && continue
  py=$(find_python "$v") || { echo "other-pythons: Python $v is not installed here; skipped"; continue; }
  elapsed=$(( $(date +%s) - START ))
  if [ "$elapsed" -gt "$BUDGET" ]; then
    echo "other-pythons: Python $v skipped: ${elapsed}s into CI, past the ${BUDGET}s budget for extra versions"
    continue
  fi
  t0=$(date +%s)
  VENV=".venv-$v" PYTHON="$py" bash scripts/setup_env.sh || { rc=1; continue; }
  echo "other-pythons: Python $v venv ready in $(( $(date +%s) - t0 ))s; fast subset:"
  ".venv-$v/bin/python" -m pytest -o tmp_path_retention_policy=failed -m "not slow" -q -p no:cacheprovider "${FAST[@]}" \
    || rc=1
  # CI's clone is thrown away: free this venv's 6.3 GB before the next one is built (the three would need ~20 GB).
  [ "${CI:-}" = "true" ] && rm -rf ".venv-$v"
done
exit "$rc"
