"""Places205's labels are the official split CSVs' integers (``trainvalsplit_places205``, as mmselfsup's
Places205 configs read them), not the sorted order of the class folders (what VISSL's ``disk_folder``, a
torchvision ImageFolder over a re-laid-out ``train/<class>/`` tree, would give). A linear head trained from
scratch does not care which permutation is used, but the class names must follow the CSV's numbering."""

from __future__ import annotations

from transfer.vissl_datasets import places205 as read_places205
from vissl_standins import places205


def test_labels_and_class_names_follow_the_csv_not_the_folder_sort(tmp_path):
    made = places205(tmp_path)
    permute = {0: 2, 1: 0, 2: 1}  # abbey -> 2, bedroom -> 0, field/cultivated -> 1: not alphabetical
    for part in ("train", "val"):
        csv = made["base"] / "trainvalsplit_places205" / f"{part}_places205.csv"
        lines = [line.rsplit(" ", 1) for line in csv.read_text().splitlines()]
        csv.write_text("".join(f"{rel} {permute[int(y)]}\n" for rel, y in lines))
        listing = read_places205(made["base"], part)
        assert listing.labels == [permute[int(y)] for _, y in lines]
        assert listing.classes == ["bedroom", "field/cultivated", "abbey"]
        for path, label in zip(listing.paths, listing.labels):  # each image's folder is its label's class
            assert path.parent.as_posix().endswith(listing.classes[label])
