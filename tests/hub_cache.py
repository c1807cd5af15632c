"""Local hub caches in each hub's own layout, for tests without network (tests/transfer/test_hub.py, tests/test_wheel.py).

The Hugging Face cache is written by huggingface_hub's own helpers (the folder name, the snapshot
symlinks into ``blobs/``, ``refs/<revision>``), so the layout is the one ``hf_hub_download`` writes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # a 40-hex commit id, as the hub's


def hf_repo(cache: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT, ref: str = "main") -> Path:
    """``cache/models--ORG--REPO`` holding ``files`` (name in repo -> local file) at ``commit``, ``refs/ref`` -> it."""
    from huggingface_hub.file_download import (_cache_commit_hash_for_specific_revision, _create_symlink,
                                               repo_folder_name)

    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    for name, src in files.items():
        blob = storage / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()  # an LFS file's etag: its sha256
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, blob)
        pointer = storage / "snapshots" / commit / name
        pointer.parent.mkdir(parents=True, exist_ok=True)
        _create_symlink(str(blob), str(pointer), new_blob=False)
    _cache_commit_hash_for_specific_revision(str(storage), ref, commit)
    return storage


def shard(state: dict[str, torch.Tensor], folder: Path, parts: int = 2) -> dict[str, Path]:
    """``state`` as transformers shards it: ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``."""
    keys = list(state)
    files: dict[str, Path] = {}
    weight_map = {}
    for i in range(parts):
        name = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i::parts]}
        save_file(part, folder / name)
        files[name] = folder / name
        weight_map.update({k: name for k in part})
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    files[index.name] = index
    return files
