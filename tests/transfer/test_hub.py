"""``--ckpt`` hub references (transfer/hub.py) against local caches in each hub's own layout (no network).

Each form is resolved by its library (huggingface_hub, torchvision's weight enums, timm's pretrained
cfgs, torch hub's cache) and read by the same tensor-only readers as a local file; the record names
the reference, the commit it resolved to and the file's sha256.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from hub_cache import COMMIT, hf_repo, shard
from transfer import hub
from transfer.backbones.info import CheckpointError, sha256_file
from transfer.backbones import load
from transfer.orchestrate.resolve import UsageError, resolve_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    """A torchvision ResNet-18 state_dict as a .safetensors file, and the state itself."""
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in torchvision.models.resnet18().state_dict().items()}
    path = tmp_path_factory.mktemp("r18") / "model.safetensors"
    save_file(state, path)
    return path, state


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty HF cache that huggingface_hub uses, offline (as on a cluster without network)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _same(a: dict, b: dict) -> bool:
    return set(a) == {k for k in b if not k.startswith("fc.")} and all(torch.equal(a[k], b[k]) for k in a)


def test_hf_repo_resolves_through_huggingface_hubs_cache_to_its_commit(r18, hf_cache):
    from huggingface_hub import scan_cache_dir

    path, state = r18
    hf_repo(hf_cache, "org/r18", {"model.safetensors": path})
    info_hf = scan_cache_dir(hf_cache)  # huggingface_hub's own reader sees the repo, its commit and ref
    (repo,) = info_hf.repos
    assert repo.repo_id == "org/r18" and {r.commit_hash for r in repo.revisions} == {COMMIT}
    assert {ref for r in repo.revisions for ref in r.refs} == {"main"}

    canonical, info = load("hf://org/r18")
    assert _same(canonical, state)
    assert info.reference == "hf://org/r18" and info.revision == COMMIT
    assert info.resolved == f"hf://org/r18@{COMMIT}/model.safetensors"
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.path.endswith(f"snapshots/{COMMIT}/model.safetensors")
    # the pinned form, a revision by name and an explicit file name resolve to the same file
    for ref in (info.resolved, "hf://org/r18@main", "hf://org/r18/model.safetensors"):
        assert hub.resolve(ref).path == hub.resolve("hf://org/r18").path


def test_hf_sharded_safetensors_are_read_through_their_index(r18, hf_cache, tmp_path):
    _, state = r18
    (tmp_path / "shards").mkdir()
    files = shard(state, tmp_path / "shards", parts=3)
    hf_repo(hf_cache, "org/sharded", files)
    canonical, info = load("hf://org/sharded")
    assert _same(canonical, state)
    assert info.resolved == f"hf://org/sharded@{COMMIT}/model.safetensors.index.json"
    parts = [files["model.safetensors.index.json"]] + [files[f"model-0000{i}-of-00003.safetensors"] for i in (1, 2, 3)]
    expected = hashlib.sha256("\n".join(hashlib.sha256(p.read_bytes()).hexdigest() for p in parts).encode()).hexdigest()
    assert info.sha256 == expected == sha256_file(info.path)
    local, local_info = load(files["model.safetensors.index.json"])  # a local index reads the same
    assert _same(local, state) and local_info.sha256 == expected and not local_info.reference
    index = tmp_path / "shards" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"conv1.weight": "../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="weight_map must name shard files in its own folder"):
        load(index)
    # a shard missing from the cache: one line naming the reference and the shard file
    (hf_cache / "models--org--sharded" / "snapshots" / COMMIT / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=rf"^--ckpt hf://org/sharded: not resolved; tried org/sharded@{COMMIT} .*"
                                              r"model-00002-of-00003") as e:
        load("hf://org/sharded")
    assert "\n" not in str(e.value)


def test_unresolvable_references_are_one_line_saying_what_was_tried(hf_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cases = {
        "hf://org/none": r"not resolved; tried org/none@main in the local cache only \(HF_HUB_OFFLINE=1\) "
                         r"\(model.safetensors: .*pytorch_model.bin: ",
        "hf://org/none@v2/weights.pth": r"tried org/none@v2 in the local cache only .*\(weights.pth: ",
        "hf://org": r"expected hf://ORG/REPO\[@REVISION\]\[/FILE\]",
        "torchvision://resnet18.NOPE": r"torchvision .* has no such weights",
        "timm://no_such_model.tag": r"timm .* has no pretrained tag 'no_such_model.tag'",
        "https://example.org/w/ckpt.pth": r"HF_HUB_OFFLINE=1 and .*torch/hub/checkpoints/ckpt.pth \(torch hub's cache",
        "https://example.org/w/ckpt.pth#sha256=12": r"expected URL#sha256=<64 hex digits>",
    }
    for ref, pattern in cases.items():
        with pytest.raises(CheckpointError) as e:
            load(ref)
        assert str(e.value).startswith(f"--ckpt {ref}") and "\n" not in str(e.value), str(e.value)
        assert __import__("re").search(pattern, str(e.value)), str(e.value)
    with pytest.raises(UsageError, match=r"^--ckpt hf://org/none: not resolved"):
        resolve_checkpoints(["hf://org/none"], [])


def test_torchvision_enum_names_its_url_in_torch_hubs_cache_and_checks_the_hash_prefix(r18, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url  # .../resnet18-f37072fd.pth
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    with pytest.raises(hub.HubError, match=f"HF_HUB_OFFLINE=1 and {cached} .*absent"):
        hub.resolve("torchvision://resnet18.IMAGENET1K_V1")
    # a file in its place whose sha256 does not start with the name's prefix (torch hub's check_hash) is refused
    cached.parent.mkdir(parents=True)
    cached.write_bytes(r18[0].read_bytes())
    for ref in ("torchvision://resnet18.IMAGENET1K_V1", "torchvision://ResNet18_Weights.IMAGENET1K_V1",
                "torchvision://resnet18.DEFAULT"):
        with pytest.raises(hub.HubError, match=f"{cached} has sha256 {sha256_file(cached)[:16]}..., expected f37072fd"):
            hub.resolve(ref)


def test_https_url_goes_to_torch_hubs_cache_and_its_sha256_is_checked(r18, tmp_path, monkeypatch):
    path, state = r18
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "r18_release.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    digest = sha256_file(cached)
    ref = f"https://example.org/releases/v1/r18_release.safetensors#sha256={digest}"
    canonical, info = load(ref)
    assert _same(canonical, state) and info.sha256 == digest and info.reference == ref and info.path == str(cached)
    assert load("https://example.org/releases/v1/r18_release.safetensors")[1].sha256 == digest
    wrong = ref[:-4] + ("0000" if not ref.endswith("0000") else "1111")
    with pytest.raises(CheckpointError, match=f"has sha256 {digest[:16]}..., expected {wrong[-64:][:16]}"):
        load(wrong)


def test_timm_tag_resolves_through_its_pretrained_cfgs_hub_repo(hf_cache, tmp_path):
    import timm

    cfg = timm.models.get_pretrained_cfg("vit_small_patch16_224.dino")
    assert cfg.hf_hub_id == "timm/vit_small_patch16_224.dino"
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", depth=1, num_classes=0)
    file = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, file)
    hf_repo(hf_cache, cfg.hf_hub_id, {"model.safetensors": file})
    got = hub.resolve("timm://vit_small_patch16_224.dino")
    assert got.pinned == f"hf://timm/vit_small_patch16_224.dino@{COMMIT}/model.safetensors" and got.revision == COMMIT
    from transfer.backbones import load

    state, info = load("timm://vit_small_patch16_224.dino")
    assert info.reference == "timm://vit_small_patch16_224.dino" and info.revision == COMMIT
    assert info.sha256 == sha256_file(file) and info.vit["depth"] == 1
    assert torch.equal(state["blocks.0.attn.qkv.weight"], vit.state_dict()["blocks.0.attn.qkv.weight"])


def test_run_all_names_the_reference_and_gives_tasks_the_pinned_one(r18, hf_cache):
    hf_repo(hf_cache, "org/r18", {"model.safetensors": r18[0]})
    (ck,) = resolve_checkpoints(["hf://org/r18"], [])
    assert ck.name == "r18" and ck.reference == f"hf://org/r18@{COMMIT}/model.safetensors"
    assert ck.ckpt_arg == ck.reference and ck.sha256 == sha256_file(r18[0])
    from transfer.orchestrate import run_all, suite_jobs
    from transfer.orchestrate.suite import load_suite

    spec = load_suite("demo", tasks=["knn"]).tasks[0]
    job = suite_jobs.Job(ck, spec, ck.task_dir(hf_cache, spec.name))
    cmd = suite_jobs.job_command(job)
    assert cmd[cmd.index("--ckpt") + 1] == ck.reference


def test_hf_repo_without_safetensors_falls_back_to_its_torch_file_at_a_named_revision(r18, hf_cache, tmp_path):
    _, state = r18
    legacy = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, legacy)  # a wrapped torch file
    other = "fedcba9876543210fedcba9876543210fedcba98"
    hf_repo(hf_cache, "org/legacy", {"pytorch_model.bin": legacy}, commit=other, ref="v1")
    canonical, info = load("hf://org/legacy@v1")
    assert _same(canonical, state) and info.revision == other
    assert info.resolved == f"hf://org/legacy@{other}/pytorch_model.bin" and info.sha256 == sha256_file(legacy)
    with pytest.raises(CheckpointError, match="tried org/legacy@main"):  # no refs/main: main is not cached
        load("hf://org/legacy")
