"""Few-shot probe: AugSelf episode sampling, the batched solver against scikit-learn's liblinear, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from transfer.probes import fewshot
from transfer.probes.fewshot import (FewShotError, episode_accuracies, fit_ovr_logreg, sample_episodes,
                              sklearn_episode_accuracies, summarize)


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (conftest.py)


def clustered(classes: int = 12, per_class: int = 40, dim: int = 64, spread: float = 0.25, seed: int = 0):
    """Overlapping, non-negative, un-normalised class clusters (like pooled ResNet features)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=spread, size=(classes, 1, dim))
    x = np.maximum(2.0 * (means + rng.normal(size=(classes, per_class, dim))) + 0.5, 0.0)
    return torch.tensor(x.reshape(-1, dim), dtype=torch.float32), np.repeat(np.arange(classes), per_class)


def test_sampling_follows_augself_protocol():
    sizes = {"tiny": 1, "small": 10, "a": 30, "b": 30, "c": 30, "d": 25}
    names = list(sizes)
    labels = np.concatenate([np.full(n, i) for i, n in enumerate(sizes.values())])
    eps = sample_episodes(labels, names, ways=5, shots=1, queries=16, episodes=300, seed=3)
    assert eps.dropped_classes == ["tiny"] and "tiny" not in eps.kept_classes
    assert eps.support.shape == (300, 5, 1) and eps.query.shape == (300, 5, 16)
    saw_replacement = False
    for s, q in zip(eps.support, eps.query):
        classes = labels[s[:, 0]]
        assert len(set(classes)) == 5 and 0 not in classes                  # 5 distinct kept classes
        for w in range(5):
            assert (labels[q[w]] == classes[w]).all()                        # queries from the same class
            assert s[w, 0] not in q[w]                                       # a shot is never a query
            if sizes[names[classes[w]]] >= 17:
                assert len(set(q[w])) == 16                                  # without replacement
            else:
                saw_replacement |= len(set(q[w])) < 16                       # small class: with replacement
    assert saw_replacement
    again = sample_episodes(labels, names, 5, 1, 16, 300, seed=3)
    assert (again.support == eps.support).all() and (again.query == eps.query).all()


def test_too_few_classes_names_them():
    labels = np.array([0] * 5 + [1] * 5 + [2] * 1)
    with pytest.raises(FewShotError, match=r"5-way 1-shot.*cat=5, dog=5, emu=1"):
        sample_episodes(labels, ["cat", "dog", "emu"], ways=5, shots=1, queries=4, episodes=3, seed=0)


def test_solver_reaches_liblinear_coefficients():
    from sklearn.linear_model import LogisticRegression

    feats, labels = clustered(dim=32)
    eps = sample_episodes(labels, [str(c) for c in range(12)], 5, 5, 4, episodes=3, seed=1)
    xs, ys = fewshot._gather(feats, eps.support)
    alpha = fit_ovr_logreg(xs, ys, ways=5)
    w = alpha @ torch.cat([xs.double(), torch.ones(3, 25, 1, dtype=torch.float64)], -1)   # [E, W, d+1]
    for e in range(3):
        for c in range(5):
            ref = LogisticRegression(solver="liblinear", tol=1e-12, max_iter=100000)
            ref.fit(xs[e].numpy(), (ys[e] == c).numpy().astype(int))
            expected = np.concatenate([ref.coef_[0], ref.intercept_])
            np.testing.assert_allclose(w[e, c].numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("shots", [1, 5])
def test_batched_solver_matches_sklearn_reference(shots):
    feats, labels = clustered()
    eps = sample_episodes(labels, [str(c) for c in range(12)], 5, shots, 16, episodes=200, seed=shots)
    ours, ref = summarize(episode_accuracies(feats, eps)), summarize(sklearn_episode_accuracies(feats, eps))
    assert 30.0 < ref[0] < 95.0, f"features too easy/hard for a meaningful comparison: {ref[0]:.1f}%"
    assert abs(ours[0] - ref[0]) <= 0.5, (ours, ref)
    assert abs(ours[1] - ref[1]) <= 0.5


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def _cli(ckpt: Path, data: Path, out: Path, cache: Path, *extra: str) -> int:
    return fewshot.main(["--ckpt", str(ckpt), "--data", str(data), "--out", str(out), "--cache-dir", str(cache),
                         "--image-size", "32", "--no-progress", *extra])


def test_cli_writes_record_and_refuses_bad_input(synthetic_root, random_ckpt, tmp_path):
    data = synthetic_root / "classification" / "shape_color"
    assert _cli(random_ckpt, data, tmp_path / "fs", tmp_path / "cache", "--episodes", "40") == 0
    rec = json.loads((tmp_path / "fs" / "record.json").read_text())
    assert rec["status"] == "ok" and rec["task"] == "fewshot" and rec["dataset"] == "synthetic/shape_color"
    assert set(rec["metrics"]) == {"acc_5way_1shot", "acc_5way_1shot_ci95", "acc_5way_5shot", "acc_5way_5shot_ci95"}
    assert all(0.0 <= v <= 100.0 for v in rec["metrics"].values())
    assert rec["checkpoint"]["arch"] == "resnet18" and rec["config"]["image_size"] == 32
    episodes = np.load(tmp_path / "fs" / rec["predictions"], allow_pickle=False)  # per-episode accuracies
    for key in ("acc_5way_1shot", "acc_5way_5shot"):
        assert episodes[key].shape == (40,) and 100 * episodes[key].mean() == pytest.approx(rec["metrics"][key], abs=1e-4)
        assert rec["intervals"][key]["lo"] <= rec["metrics"][key] <= rec["intervals"][key]["hi"]
    # an existing record is never overwritten silently
    assert _cli(random_ckpt, data, tmp_path / "fs", tmp_path / "cache", "--episodes", "40") == 2
    # more ways than classes: a failed record whose one-line error names the classes
    assert _cli(random_ckpt, data, tmp_path / "many", tmp_path / "cache", "--ways", "30", "--episodes", "2") == 1
    bad = json.loads((tmp_path / "many" / "record.json").read_text())
    classes = sorted(p.name for p in (data / "test").iterdir())
    assert bad["status"] == "failed" and "30-way" in bad["error"] and classes[0] in bad["error"]
    # a missing dataset is "skipped"
    assert _cli(random_ckpt, tmp_path / "nowhere", tmp_path / "skip", tmp_path / "cache") == 3
