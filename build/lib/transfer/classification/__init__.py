"""ImageNet linear and semi-supervised classification on mmpretrain (``python -m transfer.classification``)."""
from transfer.classification.runner import build_parser, main  # noqa: F401
