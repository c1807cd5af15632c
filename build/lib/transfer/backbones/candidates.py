"""Candidate backbones in a checkpoint, for every family: found, merged, chosen, and what is left unused.

A checkpoint is first *flattened*: nested dicts become dotted names (VISSL's ``classy_state_dict``
-> ``base_model`` -> ``model`` -> ``trunk`` is just the prefix
``classy_state_dict.base_model.model.trunk._feature_blocks.``), so every wrapper and every key
prefix is handled the same way. Each family finds its candidates by an *anchor* tensor (a ResNet's
stem conv, :mod:`transfer.backbones.resnet.layouts`; a ViT's patch embedding,
:mod:`transfer.backbones.vit.layouts`) and hands ``(prefix, layout)`` pairs to :func:`candidates_at`,
which gives each its keys (a longer candidate under a prefix owns its keys) and merges candidates
holding identical tensors (one module registered under two names, e.g. mmselfsup 0.x ``backbone`` and
``encoder_q.0``, or a momentum encoder at initialisation). The backbone is then the one ``--backbone``
names, else the only candidate, else the one a documented convention picks (:data:`CONVENTIONS`);
anything else is refused with the list of candidates.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import Tensor

# Children of torchvision's ResNet in order; lightly keeps them as nn.Sequential indices.
SEQUENTIAL_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
# Key-path parts that wrappers and SSL codebases put in front of the backbone's names; a candidate
# chosen without --backbone must consist of these (or Sequential indices), so that an unknown
# network that happens to contain a ResNet stem is never taken for the backbone silently.
KNOWN_PARTS = frozenset({
    "module", "backbone", "encoder", "encoder_q", "encoder_k", "base_encoder", "model", "teacher", "student",
    "online_network", "target_network", "net", "trunk", "network", "resnet", "body", "_orig_mod", "state_dict",
    "state_dict_ema", "model_ema", "ema", "classy_state_dict", "base_model", "_feature_blocks", "momentum_backbone",
    "backbone_momentum", "momentum_encoder", "target_net", "online_net", "online_encoder", "target_encoder",
    "teacher_backbone", "student_backbone", "online_network_state_dict", "target_network_state_dict",
    "feature_extractor", "features",
})
# (preferred role, roles it wins over, why: the codebase convention it follows).
CONVENTIONS = (
    ("teacher", {"student"}, "DINO evaluates the teacher"),
    ("online", {"momentum"}, "the online network, which MoCo (encoder_q), BYOL, solo-learn, lightly and mmselfsup "
                             "evaluate"),
    ("online", {"ema"}, "timm's load_checkpoint reads state_dict unless use_ema"),
    ("online", {"momentum", "ema"}, "the online network, not its momentum/EMA copies"),
)
_MAX_DEPTH = 8


class LayoutError(ValueError):
    """No unique backbone can be chosen (one-line message)."""


@dataclass(frozen=True)
class Candidate:
    """One backbone found in a flattened checkpoint."""

    prefix: str                 # e.g. "state_dict.momentum_backbone." ("" for a plain state_dict)
    layout: str                 # "torchvision" (names) or "sequential" (lightly child indices)
    keys: tuple[str, ...]       # its flattened keys
    aliases: tuple[str, ...] = ()  # other prefixes holding the identical tensors

    @property
    def role(self) -> str:
        return role(self.prefix)

    @property
    def name(self) -> str:
        """The prefix as a user would type it for ``--backbone`` (``''`` for top level)."""
        return self.prefix.rstrip(".")


def flatten(obj: Any) -> dict[str, Tensor]:
    """Every tensor reachable through nested mappings, under its dot-joined key path."""
    out: dict[str, Tensor] = {}

    def walk(node: Mapping, prefix: str, depth: int) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, Tensor):
                out[name] = value
            elif isinstance(value, Mapping) and depth < _MAX_DEPTH:
                walk(value, name + ".", depth + 1)

    if isinstance(obj, Mapping):
        walk(obj, "", 0)
    return out


def role(prefix: str) -> str:
    """``teacher``, ``student``, ``momentum``, ``ema`` or ``online``, from the prefix's parts."""
    for part in prefix.rstrip(".").split("."):
        if "teacher" in part:
            return "teacher"
        if "student" in part:
            return "student"
        if "momentum" in part or part.startswith("target") or part in ("encoder_k", "key_encoder", "model_k"):
            return "momentum"
        if part in ("ema", "model_ema", "ema_model") or part.endswith("_ema"):
            return "ema"
    return "online"


def candidates_at(found: list[tuple[str, str]], flat: Mapping[str, Tensor]) -> list[Candidate]:
    """The candidates at ``found`` (``(prefix, layout)`` of each anchor, in key order), identical ones merged."""
    prefixes = [p for p, _ in found]
    cands = []
    for p, layout in found:
        # A longer candidate under this prefix owns its keys (a plain state_dict + encoder_k.* copy).
        inner = [q for q in prefixes if q != p and q.startswith(p)]
        keys = tuple(k for k in flat if k.startswith(p) and not any(k.startswith(q) for q in inner))
        cands.append(Candidate(p, layout, keys))
    return _merge_identical(cands, flat)


def backbone_tensors(cand: Candidate, flat: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The candidate's tensors under torchvision names (prefix stripped, child indices renamed)."""
    out = {}
    for key in cand.keys:
        name = key[len(cand.prefix):]
        if cand.layout == "sequential":
            head, _, rest = name.partition(".")
            name = f"{SEQUENTIAL_CHILDREN.get(head, head)}.{rest}"  # unknown indices stay: refused later
        out[name] = flat[key]
    return out


def _same(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    if a.keys() != b.keys():
        return False
    return all(a[k].shape == b[k].shape and (a[k].data_ptr() == b[k].data_ptr() or bool((a[k] == b[k]).all()))
               for k in a)


def _merge_identical(cands: list[Candidate], flat: Mapping[str, Tensor]) -> list[Candidate]:
    groups: list[list[Candidate]] = []
    tensors = {c.prefix: backbone_tensors(c, flat) for c in cands}
    for c in cands:
        group = next((g for g in groups if _same(tensors[g[0].prefix], tensors[c.prefix])), None)
        if group is None:
            groups.append([c])
        else:
            group.append(c)
    merged = []
    for g in groups:
        # Name the group by its most conventional prefix: known parts, then the evaluated role, then the shortest.
        g.sort(key=lambda c: (not _known(c.prefix), c.role not in ("online", "teacher"), len(c.prefix)))
        merged.append(Candidate(g[0].prefix, g[0].layout, g[0].keys, tuple(c.prefix for c in g[1:])))
    return merged


def _known(prefix: str) -> bool:
    return all(p in KNOWN_PARTS or p.isdigit() for p in prefix.rstrip(".").split(".") if p)


def _matches(option: str, prefix: str) -> bool:
    want = [p for p in option.strip().strip(".").split(".") if p]
    have = [p for p in prefix.rstrip(".").split(".") if p]
    n = len(want)
    return n > 0 and any(have[i:i + n] == want for i in range(len(have) - n + 1))


def matches_any(option: str, cands: list[Candidate]) -> bool:
    """``option`` (``--backbone``) names one of ``cands`` (its prefix or an alias)."""
    return any(_matches(option, p) for c in cands for p in (c.prefix, *c.aliases))


def describe(cands: list[Candidate]) -> str:
    return "[" + ", ".join(f"'{c.name}' ({c.role})" for c in cands) + "]"


def choose(cands: list[Candidate], option: str | None, where: str) -> tuple[Candidate, str]:
    """The backbone and how it was chosen; :class:`LayoutError` when that is not unique."""
    if option:
        hits = [c for c in cands if any(_matches(option, p) for p in (c.prefix, *c.aliases))]
        if len(hits) != 1:
            what = "matches none" if not hits else f"matches {len(hits)}"
            raise LayoutError(f"{where}: --backbone {option!r} {what} of the candidate backbones {describe(cands)}; "
                              "pass one of those names")
        return hits[0], f"--backbone {option}"
    if len(cands) == 1:
        chosen, how = cands[0], "the only candidate"
    else:
        chosen, how = _by_convention(cands, where)
    if not _known(chosen.prefix):
        parts = [p for p in chosen.prefix.rstrip(".").split(".") if p not in KNOWN_PARTS and not p.isdigit()]
        raise LayoutError(f"{where}: unrecognised key prefix {chosen.prefix!r} (parts {parts}); if it is the "
                          f"backbone, pass --backbone {chosen.name}")
    return chosen, how


def _by_convention(cands: list[Candidate], where: str) -> tuple[Candidate, str]:
    roles = [c.role for c in cands]
    for preferred, over, why in CONVENTIONS:
        winners = [c for c in cands if c.role == preferred]
        if len(winners) == 1 and all(r in over for r in roles if r != preferred) and roles.count(preferred) == 1:
            others = [c.name for c in cands if c is not winners[0]]
            return winners[0], f"default: {preferred} over {others}: {why}"
    raise LayoutError(f"{where}: found {len(cands)} candidate backbones {describe(cands)} and no convention "
                      f"picks one; choose with --backbone NAME (e.g. --backbone {cands[0].name or '.'})")


def unused_groups(flat: Mapping, cands: list[Candidate], chosen: Candidate | None,
                  own: Callable[[str], tuple[str, str] | None]) -> list[dict]:
    """Tensors the tasks do not read, grouped, with the reason (``transfer.inspect_checkpoint``).

    ``own(rest)`` names the group of an unused tensor of the chosen backbone (``rest``: its key without
    the prefix), or None when the tasks read it; every other tensor is another candidate, an identical
    copy of one, optimizer state or not part of a backbone.
    """
    owner = {k: c for c in cands for k in c.keys}
    groups: Counter = Counter()
    for key in flat:
        c = owner.get(key)
        if c is not None and c is chosen:
            mine = own(key[len(c.prefix):])
            if mine is not None:
                groups[(c.prefix + mine[0], mine[1])] += 1
            continue
        if c is not None:
            groups[(c.prefix + "*", f"another candidate backbone ({c.role})")] += 1
        elif any(key.startswith(a) for o in cands for a in o.aliases):
            groups[(next(a for o in cands for a in o.aliases if key.startswith(a)) + "*", "identical copy of a candidate")] += 1
        else:
            parts = key.split(".")
            group = ".".join(parts[:2 if len(parts) > 2 else 1]) + ".*"
            why = "optimizer state" if parts[0].startswith("optim") else "not part of the backbone (head, projector, ...)"
            groups[(group, why)] += 1
    return [{"group": g, "count": n, "reason": why} for (g, why), n in groups.items()]
