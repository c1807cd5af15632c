#!/usr/bin/env bash
# Install detectron2 into the Python given as $1 (default: python) from the registry package
# sal-detectron2 (upstream detectron2's Python code, published only as a cp310-tagged wheel).
# Its code is pure Python on our paths (NMS/ROIAlign come from torchvision), so the wheel is
# retagged py3 and installed with --no-deps: its metadata pins numpy<2 and omits its real needs,
# which requirements.txt lists. See ../shared/ENVIRONMENT.md.
set -euo pipefail
PYBIN=${1:-python}
D2_PIN=${D2_PIN:-sal-detectron2==0.7.2}
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"$PYBIN" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 "$D2_PIN" -d "$wheels"
for w in "$wheels"/*-cp310-none-any.whl; do
  [ -e "$w" ] && mv "$w" "${w/-cp310-none-any.whl/-py3-none-any.whl}"
done
"$PYBIN" -m pip install -q --no-deps --force-reinstall "$wheels"/sal_detectron2-*.whl
"$PYBIN" -c 'import detectron2, detectron2.modeling; print("detectron2", detectron2.__version__)'
