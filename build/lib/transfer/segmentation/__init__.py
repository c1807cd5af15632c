"""Semantic-segmentation transfer on MMSegmentation (``python -m transfer.segmentation``)."""
from transfer.segmentation.runner import build_parser, main  # noqa: F401
