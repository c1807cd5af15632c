"""``--ckpt`` hub references, resolved to local files by the libraries made for each hub.

    hf://ORG/REPO[@REV][/FILE]              huggingface_hub (its cache: HF_HUB_CACHE, HF_HUB_OFFLINE)
    torchvision://resnet50.IMAGENET1K_V2    torchvision's weight enum -> its URL, torch hub's cache
    timm://vit_small_patch16_224.dino       timm's pretrained_cfg -> its hf_hub_id (else its URL)
    https://HOST/PATH/FILE[#sha256=HEX]     torch hub's cache (TORCH_HOME/hub/checkpoints/FILE)

Nothing here reads a checkpoint: the file (or a sharded set's ``*.index.json``) is handed to the same
readers as a local path (:mod:`transfer.backbones.read`). What a reference resolved to (the commit, the
torchvision version, the URL) is kept in :class:`Resolved`; :attr:`Resolved.pinned` names exactly that,
so the tasks run_all starts read the same commit even when the hub's ``main`` moves meanwhile.
``HF_HUB_OFFLINE=1`` keeps every form off the network (a pre-filled cache is used as is).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from plumbing.provenance import file_sha256

SCHEMES = ("hf://", "torchvision://", "timm://", "https://", "http://")
# What a repo holds, in the order transformers / timm look for it: tensors-only files first.
HF_CANDIDATES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json", "open_clip_pytorch_model.bin")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
INDEX_MAX_BYTES = 16 << 20  # a shard index maps tensor names to files: a few MB for the largest models


class HubError(ValueError):
    """A reference that cannot be resolved (one line: the reference and what was tried)."""


class Unreachable(HubError):
    """The hub could not be reached and the file is not cached."""


@dataclass(frozen=True)
class Resolved:
    path: Path  # the local file (or a shard index) the readers open
    reference: str  # as the user gave it
    pinned: str  # the same reference naming exactly what was resolved (commit, file)
    revision: str  # the commit, torchvision/timm version, or "" for a plain URL


def is_reference(ckpt: str | os.PathLike) -> bool:
    return isinstance(ckpt, str) and ckpt.startswith(SCHEMES)


def offline() -> bool:
    """huggingface_hub's own switch (``HF_HUB_OFFLINE``, read when it was imported or now), honoured by every form here."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def resolve(ref: str) -> Resolved:
    """The local file ``ref`` names, fetched into its hub's cache when not there (and not offline)."""
    if ref.startswith("hf://"):
        return resolve_hf(ref)
    if ref.startswith("torchvision://"):
        return resolve_torchvision(ref)
    if ref.startswith("timm://"):
        return resolve_timm(ref)
    return resolve_url(ref)


def parse_hf(ref: str) -> tuple[str, str | None, str | None]:
    """``hf://ORG/REPO[@REV][/FILE]`` -> (repo_id, revision, file)."""
    body = ref[len("hf://"):]
    parts = body.split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise HubError(f"--ckpt {ref}: expected hf://ORG/REPO[@REVISION][/FILE]")
    repo, _, rev = parts[1].partition("@")
    if not repo or (_ and not rev):
        raise HubError(f"--ckpt {ref}: expected hf://ORG/REPO[@REVISION][/FILE]")
    return f"{parts[0]}/{repo}", rev or None, parts[2] if len(parts) == 3 and parts[2] else None


def resolve_hf(ref: str, repo_id: str | None = None, revision: str | None = None,
               filename: str | None = None) -> Resolved:
    """``hf_hub_download`` of FILE, else of the first of :data:`HF_CANDIDATES` the repo has (shards too)."""
    if repo_id is None:
        repo_id, revision, filename = parse_hf(ref)
    tried = [filename] if filename else list(HF_CANDIDATES)
    failures = []
    for name in tried:
        try:
            path = _hf_download(repo_id, name, revision)
        except HubError as e:
            failures.append(f"{name}: {e}")
            if isinstance(e, Unreachable):  # the next candidate would wait for the same retries
                break
            continue
        commit = _snapshot_commit(path, name)
        if name.endswith(".index.json"):  # every shard at the same commit, or nothing
            for shard in shard_files(path):
                shard_name = str(Path(name).parent / shard) if "/" in name else shard
                try:
                    _hf_download(repo_id, shard_name, commit)
                except HubError as e:
                    raise HubError(_not_resolved(ref, repo_id, commit, [f"{name} names shard {shard_name}: {e}"])) from None
        return Resolved(path, ref, f"hf://{repo_id}@{commit}/{name}", commit)
    raise HubError(_not_resolved(ref, repo_id, revision or "main", failures))


def _not_resolved(ref: str, repo_id: str, revision: str, failures: list[str]) -> str:
    where = "the local cache only (HF_HUB_OFFLINE=1)" if offline() else "the hub and its local cache"
    return f"--ckpt {ref}: not resolved; tried {repo_id}@{revision} in {where} ({'; '.join(failures)[:300]})"


def _hf_download(repo_id: str, filename: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=offline()))
    except LocalEntryNotFoundError as e:  # not cached, and offline or the hub unreachable (its retries done)
        if offline():
            raise HubError("not in the repo cache") from None
        raise Unreachable(f"not in the local cache and the hub could not be reached ({' '.join(str(e).split())[:120]}); "
                          "on a cluster without network, fill the cache elsewhere and set HF_HUB_OFFLINE=1") from None
    except EntryNotFoundError:
        raise HubError("not in the repo") from None
    except (HfHubHTTPError, OSError, ValueError) as e:  # unknown repo/revision, no network, a bad cache
        raise HubError(f"{type(e).__name__}: {' '.join(str(e).split())[:160]}") from None


def _snapshot_commit(path: Path, filename: str) -> str:
    """The commit folder ``hf_hub_download`` returned the file from (``snapshots/<commit>/<filename>``)."""
    snapshot = path
    for _ in Path(filename).parts:
        snapshot = snapshot.parent
    return snapshot.name


def shard_files(index: Path) -> list[str]:
    """The shard files a ``*.index.json`` names (``weight_map`` values), each once, in order."""
    try:
        if index.stat().st_size > INDEX_MAX_BYTES:
            raise ValueError(f"larger than {INDEX_MAX_BYTES >> 20} MB")
        data = json.loads(index.read_text(encoding="utf-8"))
        weight_map = data["weight_map"]
        files = list(dict.fromkeys(weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise HubError(f"shard index {index} cannot be read ({type(e).__name__}: {str(e)[:80]}); expected "
                       "{\"weight_map\": {tensor: shard file}}") from None
    bad = [f for f in files if not isinstance(f, str) or "/" in f or "\\" in f or f.startswith(".")]
    if bad or not files:
        raise HubError(f"shard index {index}: weight_map must name shard files in its own folder (found {bad[:2]})")
    return files


def resolve_torchvision(ref: str) -> Resolved:
    """``torchvision://MODEL.WEIGHTS`` (``ResNet50_Weights.IMAGENET1K_V2`` also) via torchvision's enums."""
    import torchvision
    from torchvision.models import get_model_weights, get_weight

    body = ref[len("torchvision://"):]
    model, _, tag = body.rpartition(".")
    try:
        weights = get_weight(body) if "_Weights." in body else get_model_weights(model)[tag]
    except (KeyError, ValueError, AttributeError) as e:
        raise HubError(f"--ckpt {ref}: torchvision {torchvision.__version__} has no such weights ({str(e)[:100]}); "
                       "expected torchvision://MODEL.TAG, e.g. torchvision://resnet50.IMAGENET1K_V2") from None
    path = cached_url(weights.url, None, ref, hash_prefix=True)
    return Resolved(path, ref, f"torchvision://{type(weights).__name__}.{weights.name}",
                    f"torchvision {torchvision.__version__}: {weights.url}")


def resolve_timm(ref: str) -> Resolved:
    """``timm://MODEL.TAG``: timm's pretrained_cfg names the hub repo (``hf_hub_id``) or a URL."""
    import timm
    from timm.models import get_pretrained_cfg

    name = ref[len("timm://"):]
    cfg = get_pretrained_cfg(name) if name else None
    if cfg is None:
        raise HubError(f"--ckpt {ref}: timm {timm.__version__} has no pretrained tag {name!r}; "
                       "timm.list_pretrained() lists them (e.g. timm://vit_small_patch16_224.dino)")
    if cfg.hf_hub_id:
        repo_id, _, rev = cfg.hf_hub_id.partition("@")
        got = resolve_hf(ref, repo_id, rev or None, cfg.hf_hub_filename)
        return Resolved(got.path, ref, got.pinned, got.revision)
    if cfg.url:
        return Resolved(cached_url(cfg.url, None, ref), ref, cfg.url, f"timm {timm.__version__}")
    raise HubError(f"--ckpt {ref}: timm's pretrained_cfg of {name} names no hub repo and no URL")


def resolve_url(ref: str) -> Resolved:
    """``https://.../FILE[#sha256=HEX]`` into torch hub's checkpoints folder, checked against the sha256 when given."""
    url, _, fragment = ref.partition("#")
    sha = fragment[len("sha256="):].lower() if fragment.startswith("sha256=") else None
    if fragment and (sha is None or not _SHA256.match(sha)):
        raise HubError(f"--ckpt {ref}: expected URL#sha256=<64 hex digits> after '#'")
    return Resolved(cached_url(url, sha, ref), ref, ref, "")


def cached_url(url: str, sha256: str | None, ref: str, hash_prefix: bool = False) -> Path:
    """torch hub's file for ``url`` (``<hub dir>/checkpoints/<basename>``), downloaded when absent.

    ``hash_prefix``: torchvision's names carry a sha256 prefix (``resnet50-11ad3fa6.pth``), checked as
    ``torch.hub.load_state_dict_from_url(check_hash=True)`` does, also for a file already cached.
    """
    import torch.hub

    name = os.path.basename(urlparse(url).path)
    if not name:
        raise HubError(f"--ckpt {ref}: the URL {url} names no file")
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    prefix = None
    if hash_prefix and (m := torch.hub.HASH_REGEX.search(name)):
        prefix = m.group(1)
    expected = sha256 or prefix
    if not path.is_file():
        if offline():
            raise HubError(f"--ckpt {ref}: not resolved; HF_HUB_OFFLINE=1 and {path} (torch hub's cache for {url}) "
                           "is absent: copy the file there, or unset HF_HUB_OFFLINE")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # torch writes a temp file and renames it; a hash mismatch leaves nothing behind
            torch.hub.download_url_to_file(url, str(path), hash_prefix=expected, progress=False)
        except (OSError, RuntimeError, ValueError) as e:
            raise HubError(f"--ckpt {ref}: download of {url} into {path.parent} failed "
                           f"({' '.join(str(e).split())[:160]})") from None
    if expected:
        digest = file_sha256(path)
        if not digest.startswith(expected):
            raise HubError(f"--ckpt {ref}: {path} has sha256 {digest[:16]}..., expected "
                           f"{expected[:16]}...; delete it (a partial or replaced download) and run again")
    return path
