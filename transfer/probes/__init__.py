"""Frozen-feature probes: few-shot, linear and kNN (``python -m transfer.fewshot|linear|knn``)."""
