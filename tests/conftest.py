"""Shared fixtures. ``synthetic_root``: one tiny synthetic dataset per test session (a few seconds).

Other tests needing a variant call the ``make_synthetic`` factory: ``make_synthetic(size=96)``
returns the root of a dataset generated from ``SyntheticSpec.tiny()`` with those fields replaced
(cached per session, so equal overrides share one dataset).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest

from mast.data.synthetic import SyntheticSpec, ensure_dataset


@pytest.fixture(scope="session")
def make_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: ``make_synthetic(**spec_overrides) -> ROOT`` of a COMPLETE synthetic dataset."""
    cache: dict[SyntheticSpec, Path] = {}

    def make(**overrides) -> Path:
        spec = replace(SyntheticSpec.tiny(), **overrides)
        if spec not in cache:
            cache[spec] = ensure_dataset(tmp_path_factory.mktemp("synthetic"), spec)
        return cache[spec]

    return make


@pytest.fixture(scope="session")
def synthetic_root(make_synthetic: Callable[..., Path]) -> Path:
    """ROOT of ``SyntheticSpec.tiny()`` (64 px): see mast/data/README.md for the layout."""
    return make_synthetic()
