#!/usr/bin/env bash
# Create .venv with the pinned stack (requirements.txt + detectron2 from the registry).
# Idempotent: a marker keyed on the hash of the pins makes a second run take seconds.
# A run killed midway leaves no marker, so the next run repairs the venv.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
D2_PIN="sal-detectron2==0.7.2"
MARKER="$VENV/.mast-env-ok"
LOG="$VENV.install.log"

die() { echo "setup_env: $*" >&2; exit 1; }

key=$( { cat requirements.txt scripts/setup_env.sh scripts/install_detectron2.sh pyproject.toml; echo "$D2_PIN"; } | sha256sum | cut -c1-16)
if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$key" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

command -v "$PY" >/dev/null 2>&1 || die "needs $PY (Python 3.11) on PATH; set PYTHON=/path/to/python3.11"
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
  || die "$PY is $("$PY" -V 2>&1), expected Python 3.11"

echo "setup_env: building $VENV (pins changed or first run; log: $LOG)"
rm -f "$MARKER"
"$VENV/bin/python" -c "import sys" 2>/dev/null || { rm -rf "$VENV"; "$PY" -m venv "$VENV"; }
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
