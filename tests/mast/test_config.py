"""Pretraining config (presets, overrides, one-line validation errors), LARS and the lr schedule."""
from __future__ import annotations

import math

import pytest
import torch
import yaml
from torch import nn

from mast.config import (ConfigError, config_diff, from_dict, load_config,
                         to_dict, write_yaml)
from mast.optim import LARS, build_optimizer, learning_rate, peak_lr


@pytest.mark.parametrize("preset", ["demo", "stl10_r18", "imagenet_r50"])
def test_presets_resolve_and_roundtrip(preset, tmp_path):
    cfg = load_config(preset)
    path = tmp_path / "config.yaml"
    write_yaml(cfg, path)
    data = yaml.safe_load(path.read_text())
    assert data["method"] in ("vicreg", "mast")  # top level: transfer/backbones/info.py reads it
    assert "method" not in data["model"]
    assert from_dict(data) == cfg
    assert load_config(str(path)) == cfg  # a written config.yaml is itself a valid --config


def test_imagenet_preset_is_the_vicreg_recipe():
    cfg = load_config("imagenet_r50")
    assert cfg.model.arch == "resnet50" and tuple(cfg.model.expander) == (8192, 8192, 8192)
    o = cfg.optim
    assert (o.name, o.eta, o.momentum, o.weight_decay, o.batch_size) == ("lars", 0.001, 0.9, 1e-6, 2048)
    assert peak_lr(o) == pytest.approx(0.2 * 2048 / 256)
    assert o.warmup_epochs == 10 and o.final_lr_ratio == 0.001
    assert cfg.runtime.precision == "bf16" and cfg.runtime.sync_bn
    assert (cfg.loss.inv_coeff, cfg.loss.var_coeff, cfg.loss.cov_coeff) == (25, 25, 1)


def test_overrides_are_typed():
    cfg = load_config("demo", ["optim.base_lr=1e-3", "model.expander=[64,32]", "method=vicreg",
                               "runtime.compile=true", "augment.crop_scale=[0.3, 1]", "name=x1"])
    assert cfg.optim.base_lr == 1e-3 and isinstance(cfg.optim.base_lr, float)
    assert tuple(cfg.model.expander) == (64, 32)
    assert cfg.method == "vicreg" and cfg.model_config().method == "vicreg"
    assert cfg.runtime.compile is True and cfg.augment.crop_scale == (0.3, 1.0) and cfg.name == "x1"


@pytest.mark.parametrize("override, fragment", [
    ("optim.lrr=1", "unknown key 'optim.lrr'"),
    ("bogus=1", "unknown key 'bogus'"),
    ("optim.base_lr=abc", "optim.base_lr='abc' must be a number"),
    ("optim.base_lr=-1", "optim.base_lr=-1.0 must be > 0"),
    ("method=simclr", "method='simclr' is not one of"),
    ("optim.epochs=1.5", "optim.epochs=1.5 must be an integer"),
    ("augment.crop_scale=[1]", "augment.crop_scale=[1] must have 2 elements"),
    ("model.uncertainty=maybe", "model.uncertainty"),
    ("model.method=vicreg", "unknown key 'model.method'"),
    ("optim=3", "optim must be a mapping"),
    ("runtime.device=tpu", "runtime.device='tpu'"),
    ("optim.warmup_epochs=500", "optim.warmup_epochs=500.0 must be in [0, optim.epochs"),
    ("noequals", "expected key=value"),
    ("seed=-1", "seed=-1 must be in [0, 2**32)"),
    ("augment.crop_scale=[0.5,0.1]", "0 < crop_scale[0] <= crop_scale[1] <= 1"),
    ("augment.crop_scale=[0,1]", "0 < crop_scale[0] <= crop_scale[1] <= 1"),
])
def test_bad_values_are_one_line_errors(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config("demo", [override])
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_non_utf8_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"seed: 0\nname: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        load_config(str(bad))
    assert "\n" not in str(info.value)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not a preset"):
        load_config("nope")
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "missing.yaml"))


def test_config_diff_names_keys_and_ignores_bookkeeping():
    a = to_dict(load_config("demo"))
    b = to_dict(load_config("demo", ["optim.base_lr=0.1", "name=other", "runtime.log_every=7",
                                     "model.expander=[8,8]"]))
    assert config_diff(a, b) == ["model.expander", "optim.base_lr"]


def _toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3, bias=False))


def _vicreg_lars_step(model, lr, wd, eta, momentum, mu):
    """Reference: official main_vicreg.py LARS update with exclude_bias_and_norm filters."""
    new = {}
    for name, p in model.named_parameters():
        dp = p.grad.clone()
        if p.ndim != 1:
            dp = dp + wd * p.detach()
            pn, un = p.detach().norm(), dp.norm()
            q = eta * pn / un if pn > 0 and un > 0 else torch.tensor(1.0)
            dp = dp * q
        m = mu.get(name, torch.zeros_like(p)) * momentum + dp
        mu[name] = m
        new[name] = p.detach() - lr * m
    return new


def test_lars_excludes_bias_and_norm_like_vicreg():
    model = _toy_model()
    reference = _toy_model()
    reference.load_state_dict(model.state_dict())
    cfg = load_config("demo", ["optim.name=lars", "optim.weight_decay=0.1", "optim.eta=0.01"]).optim
    opt = build_optimizer(model.parameters(), cfg)
    assert isinstance(opt, LARS)
    excluded = [g for g in opt.param_groups if g["lars_exclude"]][0]
    assert {p.ndim for p in excluded["params"]} == {1} and excluded["weight_decay"] == 0.0
    mu: dict = {}
    x = torch.randn(16, 4)
    for _ in range(3):
        for m in (model, reference):
            m.zero_grad()
            m(x).pow(2).sum().backward()
        for g in opt.param_groups:
            g["lr"] = 0.5
        expected = _vicreg_lars_step(reference, 0.5, 0.1, 0.01, cfg.momentum, mu)
        opt.step()
        with torch.no_grad():
            for name, p in reference.named_parameters():
                p.copy_(expected[name])
        for (name, p), (_, r) in zip(model.named_parameters(), reference.named_parameters()):
            torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7, msg=name)
    state = opt.state_dict()
    assert all(isinstance(v, (int, float, bool, list)) for g in state["param_groups"] for v in g.values())


def test_schedule_warmup_cosine_to_final_ratio():
    cfg = load_config("demo", ["optim.epochs=10", "optim.warmup_epochs=2", "optim.base_lr=0.4",
                               "optim.batch_size=512"]).optim
    spe = 5
    peak = 0.4 * 512 / 256
    assert learning_rate(cfg, 0, spe) == 0.0
    assert learning_rate(cfg, 5, spe) == pytest.approx(peak / 2)
    assert learning_rate(cfg, 10, spe) == pytest.approx(peak)
    mid = 10 + 20
    assert learning_rate(cfg, mid, spe) == pytest.approx(peak * 0.5 + peak * 0.001 * 0.5)
    assert learning_rate(cfg, 50, spe) == pytest.approx(peak * 0.001)
    lrs = [learning_rate(cfg, s, spe) for s in range(10, 51)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert not math.isnan(learning_rate(load_config("demo", ["optim.warmup_epochs=0"]).optim, 0, 3))


def test_model_config_is_the_method_config_on_a_resnet():
    from dataclasses import fields

    from mast.model import MASTModel, MethodConfig, ModelConfig
    from mast.augment import AugmentConfig
    from mast.loss import LossConfig

    method_fields = {f.name for f in fields(MethodConfig)}
    assert issubclass(ModelConfig, MethodConfig)
    assert not method_fields & set(ModelConfig.__annotations__)  # declared once, in MethodConfig
    assert {f.name for f in fields(ModelConfig)} - method_fields == {"arch", "expander", "zero_init_residual"}
    cfg = load_config("demo", ["method=vicreg", "model.expander=[16,16]"]).model_config()
    assert cfg.method == "vicreg" and cfg.expander == (16, 16)
    model = MASTModel(cfg, LossConfig(), AugmentConfig())
    assert model.method_cfg is cfg and model.aug_names  # the method reads the one config
    with pytest.raises(ValueError, match="model.masks"):  # the method's own checks run for a ModelConfig
        ModelConfig(arch="resnet18", masks="nope")
    with pytest.raises(ValueError, match="model.arch"):
        ModelConfig(arch="vgg11")


def test_an_old_run_folders_config_still_loads_and_resumes():
    """A config.yaml written before ModelConfig was built on MethodConfig (model keys in the old order):
    it loads to the same config, and a last.pth holding it resumes (config_diff finds no difference)."""
    from pathlib import Path

    old = yaml.safe_load((Path(__file__).resolve().parents[1] / "data" / "old_run_config.yaml").read_text())
    assert list(old["model"])[:3] == ["arch", "expander", "zero_init_residual"] and "method" not in old["model"]
    cfg = from_dict(old)
    assert cfg == load_config("demo") and cfg.model_config().method == old["method"]
    assert config_diff(old, to_dict(cfg)) == []
    assert config_diff(old, to_dict(load_config("demo", ["model.masks=tied"]))) == ["model.masks"]  # it can differ
    assert to_dict(cfg)["model"].keys() == old["model"].keys()  # no key gained or lost
