"""Frozen-feature probes: few-shot, linear and kNN (``python -m transfer.probes.fewshot|linear|knn``)."""
