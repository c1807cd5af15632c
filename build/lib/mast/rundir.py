"""The files of a pretraining run directory (``OUT_DIR/NAME/``): their names, in one place.

:mod:`mast.pretrain` and :mod:`mast.run_log` write them; the transfer tasks, ``run_all`` and the
reports read them.
"""
CONFIG = "config.yaml"                # the resolved config (top-level ``method``)
VERSIONS = "versions.json"            # code and library versions
METRICS = "metrics.jsonl"             # one line per logged step, plus the kNN lines
SUMMARY = "summary.csv"               # one row per epoch; row 0 = the network at initialisation
LAST = "last.pth"                     # everything needed to resume
BACKBONE = "backbone.pth"             # the trained backbone, torchvision layout
BACKBONE_INIT = "backbone_init.pth"   # the same network before step 1: the random-init floor
TENSORBOARD = "tensorboard"           # TensorBoard event files (mast.tensorboard_events)
MAST_STATE = "mast_state.pth"         # masks, ū, heads and the held-out pass (METHOD.md §5)
