"""The VOC07 linear SVM (VISSL's train_svm protocol): its AP, its cost choice, its interval, its CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold

from transfer.probes import svm
from vissl_standins import voc07

pytestmark = pytest.mark.usefixtures("one_thread")


def _vissl_ap_transcribed(targets: np.ndarray, scores: np.ndarray) -> float:
    """VISSL's evaluate.py written out loop by loop (rec/prec padded with 0 and 1/0, envelope from the
    right, area over the recall changes): an independent reference for :func:`svm.vissl_ap`."""
    ind = np.argsort(scores)[::-1]
    hits = (targets[ind] > 0).astype(float)
    tp, fp = np.cumsum(hits), np.cumsum(1 - hits)
    prec, rec = tp / (tp + fp), tp / hits.sum()
    mrec, mpre = np.concatenate([[0], rec, [1]]), np.concatenate([[0], prec, [0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return float(sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in np.where(mrec[1:] != mrec[:-1])[0] + 1))


def test_ap_is_vissls_interpolated_ap_not_sklearns():
    # ranking (best first) miss, hit, hit: precisions at the hits 1/2, 2/3; VISSL's envelope lifts the
    # first to 2/3 -> AP 2/3; sklearn's un-interpolated AP is (1/2 + 2/3) / 2
    labels, scores = np.array([-1, 1, 1]), np.array([3.0, 2.0, 1.0])
    assert svm.vissl_ap(labels, scores) == pytest.approx(2 / 3)
    assert average_precision_score(labels, scores) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # hit, miss, hit, miss, miss, hit: precisions 1, 2/3, 1/2, all non-increasing -> both agree
    labels, scores = np.array([1, -1, 1, -1, -1, 1]), -np.arange(6.0)
    assert svm.vissl_ap(labels, scores) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    assert average_precision_score(labels, scores) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = np.where(rng.random(50) < 0.3, 1, -1)
        labels[0] = 1
        scores = rng.normal(size=50) + labels
        assert svm.vissl_ap(labels, scores) == pytest.approx(_vissl_ap_transcribed(labels, scores), abs=1e-12)


def test_difficult_images_are_left_out_of_the_test_ap_only():
    scores = np.array([[5.0], [4.0], [3.0], [2.0]])
    targets = np.array([[-1], [1], [0], [1]])  # the top-scored image is difficult
    assert svm.test_aps(scores, targets)[0] == pytest.approx(svm.vissl_ap(np.array([1, 0, 1]), np.array([4.0, 3, 2])))
    assert svm.test_aps(scores, targets)[0] == pytest.approx((1 + 2 / 3) / 2)
    assert svm.train_targets(np.array([1, 0, -1])).tolist() == [1, -1, -1]  # difficult: a negative in training


def test_cost_chosen_by_cross_validation_is_the_best_cv_score():
    rng = np.random.default_rng(1)
    n, d = 90, 20
    y = np.where(rng.random(n) < 0.35, 1, -1)
    x = svm.l2_normalize(rng.normal(size=(n, d)) + 0.2 * y[:, None] * rng.normal(size=d))
    costs = (0.001, 0.1, 10.0)
    clf, chosen, aps = svm.fit_class(x, y, costs, folds=3)
    # independent CV: sklearn's StratifiedKFold(3) without shuffling, AP of the decision function per fold
    expected = []
    for c in costs:
        fold_aps = [average_precision_score(y[te], svm.make_svm(c).fit(x[tr], y[tr]).decision_function(x[te]))
                    for tr, te in StratifiedKFold(3).split(x, y)]
        expected.append(np.mean(fold_aps))
    assert aps == pytest.approx(expected, abs=1e-9)
    assert len({round(a, 6) for a in expected}) > 1  # the costs are told apart: the choice is a real one
    assert chosen == costs[int(np.argmax(expected))] == 0.1  # an inner cost: neither end of the sweep
    ref = svm.make_svm(chosen).fit(x, y)
    assert np.allclose(clf.decision_function(x), ref.decision_function(x))
    assert clf.class_weight == {1: 2, -1: 1} and clf.loss == "squared_hinge" and clf.dual is True


def test_l2_normalize_is_vissls():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    assert np.allclose(svm.l2_normalize(x), [[3 / 5.00001, 4 / 5.00001], [0, 0]])


def test_map_interval_is_the_bootstrap_of_the_map_over_test_images():
    rng = np.random.default_rng(2)
    n, c = 30, 3
    targets = np.where(rng.random((n, c)) < 0.4, 1, 0)
    targets[:3] = 1
    targets[5, 1] = -1
    scores = rng.normal(size=(n, c)) + targets
    lo, hi = svm.map_interval(scores, targets, n_boot=300, seed=0)
    draw_rng, draws = np.random.default_rng(0), []
    for _ in range(300):  # naive: resample rows, sort again, recompute every AP
        idx = draw_rng.integers(n, size=n)
        draws.append(np.nanmean(svm.test_aps(scores[idx], targets[idx])))
    assert (lo, hi) == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])), abs=1e-12)
    assert lo < svm.test_aps(scores, targets).mean() < hi


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "external_r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_svm_cli_on_the_voc2007_layout_writes_map_with_its_interval(ckpt, tmp_path, capsys):
    voc07(tmp_path / "data")
    out = tmp_path / "out"
    rc = svm.main(["--ckpt", str(ckpt), "--data", str(tmp_path / "data"), "--dataset", "voc07", "--out", str(out),
                   "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--image-size", "224", "--scale", "demo",
                   "--costs", "0.1", "10", "--n-boot", "200", "--jobs", "2"])
    record = json.loads((out / "record.json").read_text())
    assert rc == 0, record.get("error")
    assert record["task"] == "svm" and record["dataset"] == "voc07" and record["headline"] == "mAP"
    iv = record["intervals"]["mAP"]
    assert iv["lo"] <= record["metrics"]["mAP"] <= iv["hi"] and iv["n_items"] == 40
    details = record["details"]
    assert details["n_train"] == 100 and details["n_test"] == 40 and set(details["chosen_cost"].values()) <= {0.1, 10.0}
    for cls, aps in details["cv_ap"].items():  # every class's cost is its best CV score
        assert details["chosen_cost"][cls] == details["costs"][int(np.argmax(aps))]
    assert np.mean(list(details["ap"].values())) == pytest.approx(record["metrics"]["mAP"])
    assert details["feature"] == "vissl" and details["feature_dim"] == 512 * 2 * 2  # ResNet-18's res5, pooled to 2x2
    assert "8192-d for ResNet-50" in details["feature_note"]
    small = tmp_path / "small"  # 32 px: a 1 x 1 res5 map has no 6 x 6 window -> the pooled feature, recorded
    assert svm.main(["--ckpt", str(ckpt), "--data", str(tmp_path / "data"), "--dataset", "voc07", "--out", str(small),
                     "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--image-size", "32", "--scale", "demo",
                     "--costs", "1", "--n-boot", "50"]) == 0
    details = json.loads((small / "record.json").read_text())["details"]
    assert details["feature"] == "pooled" and details["feature_dim"] == 512
    assert details["feature_note"].startswith("not VISSL's feature") and "no VISSL res5 feature" in capsys.readouterr().err


def test_vissl_feature_is_res5_avgpool6_stride1_flattened_on_the_squashed_image(tmp_path):
    """The feature against torchvision's own layer4 output and VISSL's pooling module, and the transform:
    a 64 x 32 image becomes 224 x 224 whole (no crop)."""
    from PIL import Image
    from torchvision.models.feature_extraction import create_feature_extractor

    from transfer.probes.vissl_features import _res5, _Squashed

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        res5 = create_feature_extractor(model, {"layer4": "res5"})(x)["res5"]
        expected = torch.nn.AvgPool2d([6, 6], 1, 0)(res5).flatten(1)  # the yaml's ["res5", ["AvgPool2d", [[6, 6], 1, 0]]]
        got = _res5(model, x)
    assert got.shape == (2, 8192) and torch.allclose(got, expected)
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, 56:] = 255  # a white strip at the right edge: a centre crop would cut it away
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    img = _Squashed([tmp_path / "wide.png"], 224, (0, 0, 0), (1, 1, 1))[0]
    assert img.shape == (3, 224, 224) and img[:, :, -10:].mean() > 0.9 and img[:, :, :150].max() < 0.1


def test_classes_fitted_in_threads_give_the_same_svms_as_one_by_one():
    import argparse

    rng = np.random.default_rng(3)
    targets = np.where(rng.random((60, 4)) < 0.3, 1, 0)
    targets[:4] = np.eye(4, dtype=int) + 0  # every class has positives
    targets[:12] |= np.tile(np.eye(4, dtype=int), (3, 1))
    targets[20, 2] = -1
    x = svm.l2_normalize(rng.normal(size=(60, 16)) + targets @ rng.normal(size=(4, 16)))
    classes = ["a", "b", "c", "d"]
    runs = [svm.fit_classes(x, targets, x[:10], classes, argparse.Namespace(
        costs=[0.1, 1.0], folds=3, max_iter=2000, jobs=jobs, train_split="train")) for jobs in (1, 3)]
    assert np.array_equal(runs[0][0], runs[1][0]) and runs[0][1:] == runs[1][1:]
    with pytest.raises(ValueError, match="svm: class a has 1 positives of 5 in train; 3-fold"):
        svm.fit_classes(x[:5], np.eye(5, 4, dtype=int), x[:2], classes, argparse.Namespace(
            costs=[1.0], folds=3, max_iter=2000, jobs=1, train_split="train"))
