"""Orchestration: the commands that run other commands (run_all, demo, study, dataset check).

The top layer (README "Layout", checked by tests/test_layers.py): it starts the tasks (``transfer/detection``,
``transfer/segmentation``, ``transfer/probes``) and ``reports.build`` as subprocesses, so nothing
below it imports from here.
"""
