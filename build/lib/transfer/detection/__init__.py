"""Detection / instance-segmentation transfer on detectron2 (``python -m transfer.detection``)."""
from transfer.detection.runner import build_parser, main  # noqa: F401
