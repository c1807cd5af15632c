"""The benchmark scripts run end to end on tiny inputs and print the JSON the README quotes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(*args: str) -> dict:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_pretrain_step_benchmark_reports_both_ratios():
    result = run_script("benchmarks/pretrain_step.py", "--device", "cpu", "--size", "16", "--batch", "8",
                        "--expander", "64-64", "--steps", "1", "--repeats", "1", "--warmup", "0",
                        "--workers", "0", "--aug-images", "16")
    step, aug = result["step"], result["augment"]
    assert step["vicreg_img_s"] > 0 and step["mast_img_s"] > 0
    vic, mast = step["vicreg_img_s"], step["mast_img_s"]
    rounding = 0.005 / vic * (1 + mast / vic) + 5e-5  # the rates are printed to 0.01 img/s, the ratio to 1e-4
    assert abs(step["ratio_mast_over_vicreg"] - mast / vic) <= rounding
    assert aug["torchvision_reference_img_s"] > 0
    assert abs(aug["speedup"] - aug["mast_pipeline_img_s"] / aug["torchvision_reference_img_s"]) < 1e-2


def test_shape_ceiling_trains_with_labels_and_reports_knn(synthetic_root):
    result = run_script("benchmarks/shape_ceiling.py", "--data", str(synthetic_root), "--epochs", "2",
                        "--size", "32", "--threads", "1")
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert result["train_images"] == 32 and result["test_images"] == 24  # tiny spec: 4 and 3 per class
    assert 0.0 <= result["knn_top1_init"] <= 100.0
    assert result["best_knn_top1"] == max(h["knn_top1"] for h in result["history"])


def test_probe_features_benchmark_counts_one_pass_when_the_cache_is_shared():
    result = run_script("benchmarks/probe_features.py", "--size", "32", "--depth", "4", "--dim", "64",
                        "--images", "12", "--rounds", "1")
    arms = result["rounds"][0]
    assert arms["separate"]["images_through_vit"] == 24 and arms["shared"]["images_through_vit"] == 12
    knn, lin = arms["shared"]["tasks"]
    assert (knn["features"], lin["features"]) == (["cls", 1], ["cls", 4])  # DINO's kNN and linear features
    assert knn["cache_hits"] == [False, False] and lin["cache_hits"] == [True, True]
    assert not any(t["cache_hits"][0] for t in arms["separate"]["tasks"])
    ratio = result["ratio_shared_over_separate"]["features_cpu_s"]
    assert ratio["mean"] == round(arms["shared"]["features_cpu_s"] / arms["separate"]["features_cpu_s"], 3)


def test_newcomer_paths_counts_the_files_each_path_really_imports():
    result = run_script("benchmarks/newcomer_paths.py")
    paths = result["paths"]
    for path in paths.values():
        assert path["files"] == len(path["list"]) and path["lines"] == sum(path["list"].values())
        assert path["mast_file"] == str(ROOT / "mast" / "__init__.py")  # this checkout, not the editable install's
        assert not any(f.startswith(("benchmarks/", "tests/")) for f in path["list"])
    assert {"transfer/probes/knn.py", "transfer/probes/features.py"} <= set(paths["knn_vit"]["list"])
    assert {"mast/pretrain.py", "mast/loss.py", "mast/optim.py"} <= set(paths["pretrain_step"]["list"])
    run_all = paths["run_all_slurm"]
    assert {"transfer/run_all.py", "transfer/orchestrate/run_all.py", *run_all["job_files"]} <= set(run_all["list"])
    assert any(f.endswith("job_command.py") for f in run_all["job_files"])  # what the SLURM job unpickles
    assert result["packages"]["all"]["lines"] == sum(c["lines"] for k, c in result["packages"].items() if k != "all")
