"""Read a checkpoint file as data, never as code: torch files (zip or legacy) and ``.safetensors``.

A torch file is a pickle, and a pickle can name any Python function and call it while it loads.
Every read here goes through torch's ``weights_only`` unpickler, which only rebuilds tensors and
plain containers. What it refuses by default, the classes trainers pickle next to the weights
(mmengine's ``HistoryBuffer`` in a Runner file's ``message_hub``, numpy scalars and arrays, argparse
``Namespace``), is listed from the file *without* loading it
(``torch.serialization.get_unsafe_globals_in_checkpoint`` reads the pickle's opcodes), and each of
those names is bound, for this one load, to an :class:`Opaque` placeholder of ours: nothing the file
names is imported or called, the placeholder only records the arguments and state it is given.

Callers that need a few real objects back (segmentation's ``--resume`` needs mmengine's message
hub) pass ``admit``: exact names mapped to objects they vouch for (:func:`runner_admits`).
Modules torch blocklists (``os``, ``sys``, ``posix``...) are refused outright: a file that asks for
them is not a checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

# Plain classes some trainers pickle next to the weights (timm and DINO save their argparse ``args``).
SAFE_GLOBALS: list[Any] = [argparse.Namespace]
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
SAFETENSORS_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".index.json"  # a sharded checkpoint's map of tensor -> shard file (transformers' layout)
# torch's advice around a weights_only refusal (which offers to unpickle the file): not the reason.
_BOILERPLATE = ("Weights only load failed", "(1)", "(2)", "Check the documentation", "Please file an issue",
                "In PyTorch 2.6")


class FileReadError(ValueError):
    """A file that cannot be read as a checkpoint (one-line message naming the file and what to do)."""


class Opaque:
    """Stands for an object of a class the file names (``global_name``); nothing of that class is run.

    Calling it (pickle's REDUCE/NEWOBJ) records ``args``; pickle's BUILD records ``state``.
    """

    global_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.global_name}: not loaded>"


def placeholder(name: str) -> type[Opaque]:
    """A fresh :class:`Opaque` subclass standing for the global ``name`` (``module.qualname``)."""
    return type(name.rsplit(".", 1)[-1], (Opaque,), {"global_name": name, "__module__": __name__})


def plain_message(error: BaseException) -> str:
    """The first meaningful line of ``error``, ANSI codes and torch's advice to unpickle removed."""
    text = _ANSI.sub("", str(error))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(_BOILERPLATE)]
    line = (useful or lines or [type(error).__name__])[0]
    return line[:200]


def is_safetensors(path: Path, data: bytes) -> bool:
    """``data`` (the bytes of ``path``) is a safetensors file: by the suffix, or by its header (8-byte length, then JSON)."""
    if path.suffix == SAFETENSORS_SUFFIX:
        return True
    head = data[:9]
    return len(head) == 9 and int.from_bytes(head[:8], "little") < (1 << 27) and head[8:9] == b"{"


def read_bytes(path: Path) -> bytes:
    """The whole file, in one open: every later step (format sniff, pickle scan, load, sha256) reads these bytes."""
    try:
        return path.read_bytes()
    except OSError as e:  # unreadable (chmod 000, a folder): one line, as every other read here
        raise FileReadError(f"checkpoint {path} cannot be read ({e.strerror or type(e).__name__}); check its "
                            "permissions (ls -l) or the path") from None


def read_safetensors(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file (a flat ``name -> tensor`` dict; it holds no code)."""
    try:
        from safetensors.torch import load
    except ImportError:
        raise FileReadError(f"checkpoint {path} is a .safetensors file and the safetensors package is missing; "
                            "run `make setup` (or pip install safetensors)") from None
    try:
        return load(data)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user-facing error
        raise FileReadError(f"checkpoint {path} cannot be read as a safetensors file ({plain_message(e)}); "
                            "re-download it, or re-save it with safetensors.torch.save_file") from None


def read_torch_file(path: str | Path, admit: Mapping[str, Any] | None = None, data: bytes | None = None) -> Any:
    """The object in torch file ``path`` (its bytes ``data`` when already read), rebuilt by torch's
    ``weights_only`` unpickler.

    Globals outside torch's allowlist become :func:`placeholder` classes, except the exact names in
    ``admit`` (name -> the object to bind; the caller vouches that building it runs no file code).
    """
    path = Path(path)
    data = read_bytes(path) if data is None else data
    admit = dict(admit or {})
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        try:
            foreign = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - a legacy (non-zip) file: no scan, torch's allowlist alone
            foreign = []
    bound = [(obj, n) for n, obj in admit.items()] + [(placeholder(n), n) for n in foreign if n not in admit]
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS + bound):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user-facing error
        msg = plain_message(e)
        if "is blocked" in msg:
            raise FileReadError(f"checkpoint {path} asks to run code when loaded ({msg}); it was not read. A checkpoint is "
                                "data: re-save its state_dict with torch.save from a source you trust") from None
        raise FileReadError(f"checkpoint {path} cannot be read as a torch file ({msg}); expected a file written by "
                            "torch.save or a .safetensors file: re-download it, or re-save its state_dict") from None


def read_any(path: str | Path, admit: Mapping[str, Any] | None = None) -> Any:
    """A checkpoint file's content: a safetensors dict, or the torch file's object (:func:`read_torch_file`)."""
    return read_file(path, admit)[0]


def read_file(path: str | Path, admit: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """``(content, sha256)`` of a checkpoint file, each file opened once (a sharded checkpoint: its index and
    every shard once; the sha256 is then the index's and the shards' sha256 joined, as ``sha256_file`` has it)."""
    path = Path(path)
    if not path.is_file():  # also a FIFO or device: only a regular file is opened (a FIFO would block)
        raise FileReadError(f"checkpoint {path} does not exist (expected a .pth/.pt/.pkl/.safetensors file); "
                            "check the path")
    data = read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    if path.name.endswith(INDEX_SUFFIX):
        merged, digests = read_sharded(path, data)
        return merged, hashlib.sha256("\n".join([digest, *digests]).encode()).hexdigest()
    if is_safetensors(path, data):
        return read_safetensors(path, data), digest
    return read_torch_file(path, admit, data), digest


def read_sharded(index: Path, data: bytes) -> tuple[dict[str, Any], list[str]]:
    """The tensors of a sharded checkpoint (its index's bytes ``data``) and each shard's sha256: every shard its
    ``*.index.json`` names (``weight_map``), each read as tensors only, merged; a tensor the index places in a
    shard that lacks it, or in two shards, is refused."""
    from transfer.hub import HubError, shard_files

    try:
        files = shard_files(index)
    except HubError as e:
        raise FileReadError(str(e)) from None
    weight_map = json.loads(data.decode("utf-8"))["weight_map"]
    merged: dict[str, Any] = {}
    digests = []
    for name in files:
        shard, digest = read_file(index.parent / name)
        digests.append(digest)
        if not isinstance(shard, Mapping):
            raise FileReadError(f"shard {index.parent / name} holds a {type(shard).__name__}, expected a dict of tensors")
        twice = sorted(set(shard) & set(merged))
        if twice:
            raise FileReadError(f"sharded checkpoint {index}: tensor {twice[0]} is in two shards")
        merged.update(shard)
    missing = [k for k in weight_map if k not in merged]
    if missing:
        raise FileReadError(f"sharded checkpoint {index}: {len(missing)} tensors its index names are in no shard "
                            f"({missing[:3]}); a partial download? re-download the shards")
    return merged, digests


def read_runner_file(path: str | Path) -> Any:
    """An mmengine Runner checkpoint with its message hub rebuilt (:func:`runner_admits`), for resuming.

    ``HistoryBuffer.__setstate__`` merges the file's ``statistics_methods`` into a dict shared by
    the class; it is restored afterwards, so a file can never change what ``mean`` computes.
    """
    from mmengine.logging import HistoryBuffer

    registry = dict(HistoryBuffer._statistics_methods)
    try:
        return read_torch_file(path, admit=runner_admits())
    finally:
        HistoryBuffer._statistics_methods.clear()
        HistoryBuffer._statistics_methods.update(registry)


def runner_admits() -> dict[str, Any]:
    """What an mmengine Runner checkpoint needs rebuilt for real to be resumed: its message hub.

    ``HistoryBuffer`` (a plain class: rebuilt by ``__new__`` and its own ``__setstate__``, which only
    copies arrays), numpy's array/scalar reconstructors (C code that copies bytes), and ``getattr``
    restricted to the buffer's registered statistics methods (pickle names them through it).
    """
    import numpy as np
    from mmengine.logging import HistoryBuffer

    admits: dict[str, Any] = {"mmengine.logging.history_buffer.HistoryBuffer": HistoryBuffer,
                              "numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype,
                              "builtins.getattr": _statistics_getattr(HistoryBuffer),
                              # protocol 2 writes an empty bytes object (an empty array's data) as bytes()
                              "__builtin__.bytes": _empty_bytes, "builtins.bytes": _empty_bytes}
    for core in ("numpy.core", "numpy._core"):
        admits[f"{core}.multiarray._reconstruct"] = np.ndarray.__reduce__(np.zeros(0))[0]
        admits[f"{core}.multiarray.scalar"] = np.float64(0).__reduce__()[0]
    for name in dir(np.dtypes):
        if name.endswith("DType"):
            admits[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    return admits


def _empty_bytes() -> bytes:
    """``bytes()``, the only call protocol 2 makes of ``bytes`` (no size: nothing to allocate)."""
    return b""


def _statistics_getattr(history_buffer: type) -> Callable[[Any, str], Any]:
    """``getattr`` that only looks up ``history_buffer``'s registered statistics methods."""
    allowed = set(getattr(history_buffer, "_statistics_methods", {}))

    def statistics_getattr(obj: Any, name: str) -> Any:
        if obj is history_buffer and name in allowed:
            return getattr(obj, name)
        return placeholder(f"getattr({getattr(obj, '__name__', type(obj).__name__)}, {name!r})")()

    return statistics_getattr
