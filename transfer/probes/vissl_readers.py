"""VOC07, Places205 and iNat18 for the probes: :mod:`transfer.vissl_datasets`'s readers, as ``Items``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from transfer.probes.readers import Items
from transfer.vissl_datasets import VISSL_READERS as LISTINGS
from transfer.vissl_datasets import VOC_CLASSES, Listing, check_listed

__all__ = ["VOC_CLASSES", "VISSL_READERS", "voc07", "places205", "inat18", "check_listed"]


def _as_items(reader: Callable[[Path, str], Listing]) -> Callable[[Path, str], Items]:
    def read(root: Path, part: str) -> Items:
        listing = reader(root, part)
        return Items(listing.labels, listing.classes, paths=listing.paths, targets=listing.targets)

    read.__name__, read.__doc__ = reader.__name__, reader.__doc__
    return read


VISSL_READERS = {name: _as_items(reader) for name, reader in LISTINGS.items()}
voc07, places205, inat18 = VISSL_READERS["voc07"], VISSL_READERS["places205"], VISSL_READERS["inat18"]
