#!/usr/bin/env bash
# Create .venv with the pinned stack (requirements.txt + detectron2 from the registry).
# Idempotent: a marker keyed on the hash of the pins makes a second run take seconds.
# A run killed midway leaves no marker, so the next run repairs the venv.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
SUPPORTED="3.13 3.12 3.11"  # newest first: without PYTHON, the newest one on PATH is used
D2_PIN="sal-detectron2==0.7.2"
MARKER="$VENV/.mast-env-ok"
LOG="$VENV.install.log"

die() { echo "setup_env: $*" >&2; exit 1; }

if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
  command -v "$PY" >/dev/null 2>&1 || die "PYTHON=$PY is not an interpreter on PATH (expected Python ${SUPPORTED// /, })"
else
  # An existing venv keeps its version; a new one gets the newest supported Python on PATH.
  PY=""
  venv_ver=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
  for v in $venv_ver $SUPPORTED; do
    if command -v "python$v" >/dev/null 2>&1 && "python$v" -c 'import sys' >/dev/null 2>&1; then PY="python$v"; break; fi
  done
  [ -n "$PY" ] || die "needs Python ${SUPPORTED// /, } on PATH (none found); set PYTHON=/path/to/python3.X"
fi
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || die "$PY does not run"
case " $SUPPORTED " in *" $pyver "*) ;; *) die "$PY is Python $pyver, expected one of ${SUPPORTED// /, } (set PYTHON)";; esac

key=$( { cat requirements.txt scripts/setup_env.sh scripts/install_detectron2.sh pyproject.toml; echo "$D2_PIN $pyver"; } | sha256sum | cut -c1-16)
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$key" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

# Disk: a venv is 6.3 GB (torch's CUDA libraries 3.2 GB of it) and the build peaks at 7.3 GB used (measured
# 2026-12-06, Python 3.13, with the downloaded wheels); a full disk fails deep inside pip, so say it up front.
need_gb=${MAST_VENV_MIN_FREE_GB:-8}
for dir in "$(dirname "$VENV")" "${TMPDIR:-/tmp}"; do
  free_kb=$(df -Pk "$dir" 2>/dev/null | awk 'NR==2 {print $4}')
  if [ -n "$free_kb" ] && [ "$free_kb" -lt $(( need_gb * 1048576 )) ]; then
    die "building $VENV needs about $need_gb GB free on the disk of $(cd "$dir" && pwd), which has $(( free_kb / 1048576 )) GB (free some space, or set MAST_VENV_MIN_FREE_GB)"
  fi
done

echo "setup_env: building $VENV with Python $pyver (pins changed or first run; log: $LOG)"
rm -f "$MARKER"
# A venv of another Python version (PYTHON changed) is rebuilt, not patched.
venv_ver=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
[ "$venv_ver" = "$pyver" ] || { rm -rf "$VENV"; "$PY" -m venv "$VENV"; }
pip_() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@" >>"$LOG" 2>&1; }
: >"$LOG"

# Fail with one line when the registry is unreachable, not with a wall of pip output.
pip_ download --timeout 20 --retries 1 --no-deps -d "$(mktemp -d)" "tabulate==0.9.0" \
  || die "cannot reach the package registry (pip download failed; see $LOG)"

pip_ install --upgrade "pip>=24" || die "pip upgrade failed (see $LOG)"
pip_ install -r requirements.txt || die "installing requirements.txt failed (see $LOG)"

# detectron2: retagged registry wheel, --no-deps (scripts/install_detectron2.sh explains why).
D2_PIN="$D2_PIN" bash scripts/install_detectron2.sh "$VENV/bin/python" >>"$LOG" 2>&1 \
  || die "installing $D2_PIN failed (see $LOG)"
pip_ install --no-deps -e . || die "installing this project (editable) failed (see $LOG)"

"$VENV/bin/python" - <<'PY' >>"$LOG" 2>&1 || die "import check failed after install (see $LOG)"
import torch, torchvision, detectron2, mmengine, mmseg, pycocotools, pandas, matplotlib, sklearn
import mast, transfer
print("imports ok", torch.__version__, torchvision.__version__)
PY
echo "$key" >"$MARKER"
echo "setup_env: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
