"""The ground-truth world of ``benchmarks/mechanism.py``: known factors, a fixed non-linear mixing map,
and augmentations that each perturb exactly one factor, recording θ and δ as the image pipeline does.

- content: one of ``n_classes`` classes, a prototype vector in R^content_dim plus within-class noise;
- style factors s_1..s_K ~ N(0, 1), one scalar each; augmentation k perturbs only s_k:
  s_k^v = s_k + θ_k^v, θ_k^v = γ_ik · a_k · ξ^v, ξ^v ~ U(−1, 1), γ_ik ~ U(0, 1) the pair's strength;
  θ_k^v (one column per augmentation, per view) and δ_ik = |θ_k¹ − θ_k²| / (2·a_k) ∈ [0, 1] are what
  the model sees (METHOD.md §1's θ and δ: recorded per view, a discrepancy in [0, 1] per pair);
- x = standardise(W3·tanh(W2·tanh(W1·[content, s] + b1) + b2)) + observation noise (per view): no
  factor sits on an input axis.

The factors are named by their role: ``strong`` (a = 1.5, downstream signal), ``mild`` (a = 0.3, signal)
and ``nuisance`` (a = 1.5, carries no downstream signal: no task reads it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from mast.augment import AugmentedBatch


@dataclass
class WorldSpec:
    """The data-generating process (fixed by ``seed``, independent of the training seed)."""

    n_classes: int = 10
    content_dim: int = 4
    within_class: float = 0.5
    prototype_scale: float = 1.5
    factors: tuple[str, ...] = ("strong", "mild", "nuisance")
    strengths: tuple[float, ...] = (1.5, 0.3, 1.5)  # a_k, in units of the factor's std
    signal: tuple[bool, ...] = (True, True, False)  # does a downstream task read s_k?
    obs_dim: int = 32
    hidden: int = 64
    noise: float = 0.05
    seed: int = 1234

    def __post_init__(self) -> None:
        self.factors, self.strengths, self.signal = tuple(self.factors), tuple(self.strengths), tuple(self.signal)
        if not (len(self.factors) == len(self.strengths) == len(self.signal) >= 3):
            raise ValueError(f"world: expected K >= 3 factors with one strength and signal flag each, got "
                             f"{self.factors}, {self.strengths}, {self.signal}")


@dataclass
class Latents:
    label: Tensor  # [N] long
    content: Tensor  # [N, content_dim]
    style: Tensor  # [N, K]


@dataclass
class World:
    spec: WorldSpec
    prototypes: Tensor
    weights: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    mean: Tensor | None = None
    std: Tensor | None = None

    @property
    def k(self) -> int:
        return len(self.spec.factors)

    def param_slices(self) -> dict[str, slice]:
        """One θ column per augmentation (named after the factor it perturbs)."""
        return {name: slice(i, i + 1) for i, name in enumerate(self.spec.factors)}

    def describe(self) -> dict:
        return asdict(self.spec)


def make_world(spec: WorldSpec) -> World:
    """The fixed prototypes and random mixing map (seeded by ``spec.seed``), standardised on 16384 draws."""
    gen = torch.Generator().manual_seed(spec.seed)
    protos = spec.prototype_scale * torch.randn(spec.n_classes, spec.content_dim, generator=gen)
    dims = [spec.content_dim + len(spec.factors), spec.hidden, spec.hidden, spec.obs_dim]
    weights = []
    for a, b in zip(dims[:-1], dims[1:]):
        gain = 2.0 if b != spec.obs_dim else 1.0  # strong enough that tanh bends (non-linear mixing)
        weights.append((gain * torch.randn(b, a, generator=gen) / a ** 0.5, 0.3 * torch.randn(b, generator=gen)))
    world = World(spec, protos, weights)
    lat = sample_latents(world, 16384, gen)
    clean = mix(world, lat.content, lat.style)
    world.mean, world.std = clean.mean(0), clean.std(0)
    return world


def sample_latents(world: World, n: int, gen: torch.Generator) -> Latents:
    spec = world.spec
    label = torch.randint(spec.n_classes, (n,), generator=gen)
    content = world.prototypes[label] + spec.within_class * torch.randn(n, spec.content_dim, generator=gen)
    return Latents(label, content, torch.randn(n, world.k, generator=gen))


def mix(world: World, content: Tensor, style: Tensor) -> Tensor:
    """The non-linear map from factors to observations (before standardisation and noise)."""
    h = torch.cat([content, style], dim=1)
    for i, (w, b) in enumerate(world.weights):
        h = h @ w.T + b
        if i < len(world.weights) - 1:
            h = torch.tanh(h)
    return h


def observe(world: World, content: Tensor, style: Tensor, gen: torch.Generator | None) -> Tensor:
    """x = standardised mix + observation noise (none when ``gen`` is None)."""
    x = (mix(world, content, style) - world.mean) / world.std
    if gen is not None:
        x = x + world.spec.noise * torch.randn(x.shape, generator=gen)
    return x


def sample_theta(world: World, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """θ¹, θ² [N, K] and δ [N, K] for n pairs: per-pair strength γ, per-view ξ (module docstring)."""
    a = torch.tensor(world.spec.strengths)
    gamma = torch.rand(n, world.k, generator=gen)
    theta1 = gamma * a * (2 * torch.rand(n, world.k, generator=gen) - 1)
    theta2 = gamma * a * (2 * torch.rand(n, world.k, generator=gen) - 1)
    return theta1, theta2, discrepancy(world, theta1, theta2)


def discrepancy(world: World, theta1: Tensor, theta2: Tensor) -> Tensor:
    """δ_ik = |θ_k¹ − θ_k²| / (2·a_k) ∈ [0, 1]; exactly 0 where k acted identically on both views."""
    return ((theta1 - theta2).abs() / (2 * torch.tensor(world.spec.strengths))).clamp(0.0, 1.0)


def pair_batch(world: World, lat: Latents, theta1: Tensor, theta2: Tensor, gen: torch.Generator,
               noise: bool = True) -> AugmentedBatch:
    """Two views of each latent, augmentation k adding θ_k^v to s_k; θ and δ recorded per pair."""
    x1 = observe(world, lat.content, lat.style + theta1, gen if noise else None)
    x2 = observe(world, lat.content, lat.style + theta2, gen if noise else None)
    return AugmentedBatch(x1=x1, x2=x2, theta1=theta1, theta2=theta2, delta=discrepancy(world, theta1, theta2),
                          param_slices=world.param_slices())


def only_k_pairs(world: World, lat: Latents, k: int | None, gen: torch.Generator, noise: bool = True) -> AugmentedBatch:
    """Held-out pairs that differ ONLY in augmentation k (every other augmentation applied identically to
    both views), or not at all (k None): θ² = θ¹ except column k, redrawn with the pair's strength.
    ``noise=False``: without observation noise (the benchmark's known answer)."""
    theta1, theta2, _ = sample_theta(world, lat.label.shape[0], gen)
    same = theta1.clone()
    if k is not None:
        same[:, k] = theta2[:, k]
    return pair_batch(world, lat, theta1, same, gen, noise)


def subset(lat: Latents, idx: Tensor) -> Latents:
    return Latents(lat.label[idx], lat.content[idx], lat.style[idx])
