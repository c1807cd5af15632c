"""Frozen-feature probes: the feature cache (real torchvision ResNet-18), linear probe, kNN and their CLIs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from transfer.probes import knn, linear
from transfer.probes.features import FeatureError, FeatureExtractor
from transfer.probes.knn import knn_predict
from transfer.probes.linear import LinearModel, accuracy, fit_linear, sweep


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (conftest.py)


def _save_resnet18(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return _save_resnet18(tmp_path / "r18.pth", seed=0)


@pytest.fixture
def resnet_forwards():
    """Counts forward calls of any torchvision ResNet (a global hook: the model itself is untouched)."""
    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: calls.append(1) if isinstance(module, torchvision.models.ResNet) else None)
    yield calls
    handle.remove()


def _extractor(ckpt: Path, cache: Path) -> FeatureExtractor:
    return FeatureExtractor(ckpt, image_size=32, cache_dir=cache, batch_size=64, progress=False)


def test_second_run_reads_the_cache_without_the_network(synthetic_root, ckpt, tmp_path, resnet_forwards):
    data = synthetic_root / "classification" / "shape"
    first = _extractor(ckpt, tmp_path / "cache").features(data, "train")
    assert not first.from_cache and len(resnet_forwards) > 0
    assert first.features.shape == (len(first.labels), 512) and first.classes == sorted(p.name for p in (data / "train").iterdir())
    resnet_forwards.clear()
    extractor = _extractor(ckpt, tmp_path / "cache")
    second = extractor.features(data, "train")
    assert second.from_cache and resnet_forwards == [] and extractor.model is None
    assert torch.equal(first.features, second.features) and torch.equal(first.labels, second.labels)

    # the checkpoint changes on disk (same path): the old entry is stale and never used
    _save_resnet18(ckpt, seed=1)
    third = _extractor(ckpt, tmp_path / "cache").features(data, "train")
    assert not third.from_cache and len(resnet_forwards) > 0
    assert not torch.allclose(third.features, first.features)


def test_changed_image_invalidates_the_cache(synthetic_root, ckpt, tmp_path):
    data = tmp_path / "shape"
    shutil.copytree(synthetic_root / "classification" / "shape" / "val", data / "val")
    extractor = _extractor(ckpt, tmp_path / "cache")
    assert not extractor.features(data, "val").from_cache
    assert extractor.features(data, "val").from_cache
    image = next((data / "val").rglob("*.png"))
    image.write_bytes((data / "val").rglob("*.png").__next__().read_bytes() + b"\0")  # same picture, new bytes
    assert not extractor.features(data, "val").from_cache


def test_bad_datasets_are_one_line_errors(synthetic_root, ckpt, tmp_path):
    extractor = _extractor(ckpt, tmp_path / "cache")
    with pytest.raises(FeatureError, match=r"split .*nosuch does not exist"):
        extractor.features(tmp_path, "nosuch")
    (tmp_path / "empty" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(FeatureError, match=r"empty: no images"):
        extractor.features(tmp_path / "empty", "test")
    data = tmp_path / "corrupt"
    shutil.copytree(synthetic_root / "classification" / "shape" / "test", data / "test")
    broken = sorted((data / "test").rglob("*.png"))[3]
    broken.write_bytes(b"not a png at all")
    with pytest.raises(FeatureError) as err:
        extractor.features(data, "test")
    assert str(broken) in str(err.value) and "\n" not in str(err.value)


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(4, 32, generator=g) * 4

    def draw(n: int):
        y = torch.arange(4).repeat_interleave(n)
        return (means[y] + torch.randn(len(y), 32, generator=g)).relu(), y

    (xtr, ytr), (xva, yva), (xte, yte) = draw(30), draw(10), draw(20)
    model, wd, val_acc, history = sweep((xtr, ytr), (xva, yva), 4, max_iter=50)
    assert len(history) == 45 and history[0]["weight_decay"] == pytest.approx(1e-6)
    fit_linear(model, torch.cat([xtr, xva]), torch.cat([ytr, yva]), wd, max_iter=50)
    assert val_acc == 100.0 and accuracy(model, xte, yte) >= 99.0
    assert accuracy(model, xte, yte, "class_avg") >= 99.0


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_linear_probe_matches_sklearn_on_digits(C):
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    tr, te = order[:1000], order[1000:]
    with threadpool_limits(1):  # BLAS threads would fight the other test processes
        ref = LogisticRegression(C=C, max_iter=5000, tol=1e-6).fit(x[tr], y[tr])
    ref_acc = 100.0 * ref.score(x[te], y[te])
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    # sklearn minimises ½‖W‖² + C Σ CE with a free intercept = C·(Σ CE + ‖W‖²/(2C))
    model = fit_linear(LinearModel(64, 10), xt[tr], yt[tr], weight_decay=1 / (2 * C), regularize_bias=False)
    ours = accuracy(model, xt[te], yt[te])
    assert ref_acc > 90.0 and abs(ours - ref_acc) <= 1.0, (ours, ref_acc)
    # the same objective: the weights agree too (up to both solvers' tolerances)
    assert np.abs(model.weight.numpy().T - ref.coef_).max() <= 0.05 * np.abs(ref.coef_).max()


def test_knn_matches_a_direct_implementation():
    g = torch.Generator().manual_seed(0)
    train, labels, query = torch.randn(300, 16, generator=g), torch.randint(0, 5, (300,), generator=g), torch.randn(40, 16, generator=g)
    pred = knn_predict(train, labels, query, k=20, num_classes=5, chunk=7)
    a = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    expected = []
    for row in a:
        top = row.argsort(descending=True)[:20]
        votes = np.zeros(5)
        for i in top.tolist():
            votes[labels[i]] += np.exp(row[i].item() / 0.07)
        expected.append(int(votes.argmax()))
    assert pred.tolist() == expected
    assert knn_predict(train, labels, query, k=1000, num_classes=5).shape == (40,)  # k capped at the bank size


def test_linear_and_knn_clis_share_cached_features(synthetic_root, ckpt, tmp_path, resnet_forwards):
    common = ["--ckpt", str(ckpt), "--data", str(synthetic_root / "classification" / "color"),
              "--cache-dir", str(tmp_path / "cache"), "--image-size", "32", "--no-progress"]
    assert linear.main([*common, "--out", str(tmp_path / "lin"), "--metric", "class_avg"]) == 0
    assert len(resnet_forwards) > 0
    resnet_forwards.clear()
    assert knn.main([*common, "--out", str(tmp_path / "knn")]) == 0
    assert resnet_forwards == []  # train and test features came from the linear probe's cache
    lin = json.loads((tmp_path / "lin" / "record.json").read_text())
    kn = json.loads((tmp_path / "knn" / "record.json").read_text())
    assert lin["status"] == kn["status"] == "ok"
    assert set(lin["metrics"]) == {"top1", "class_avg"} and set(kn["metrics"]) == {"top1_k20", "top1_k200"}
    assert lin["details"]["weight_decay"] in linear.WEIGHT_DECAYS and lin["config"]["max_iter"] == 50
    assert all(0.0 <= v <= 100.0 for v in [*lin["metrics"].values(), *kn["metrics"].values()])
    # every accuracy carries its bootstrap interval, and the per-image correctness it came from
    for rec, out, metrics in ((lin, "lin", ["top1"]), (kn, "knn", ["top1_k20", "top1_k200"])):
        scores = np.load(tmp_path / out / rec["predictions"], allow_pickle=False)
        for m in metrics:
            iv = rec["intervals"][m]
            assert iv["lo"] <= rec["metrics"][m] <= iv["hi"] and iv["hi"] > iv["lo"] and iv["level"] == 0.95
            assert scores[m].shape == (rec["details"]["n_test"],) and set(np.unique(scores[m])) <= {0.0, 1.0}
            assert 100 * scores[m].mean() == pytest.approx(rec["metrics"][m], abs=1e-4)
