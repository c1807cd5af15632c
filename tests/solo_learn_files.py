"""solo-learn's checkpoint files as its own code writes them (without installing solo-learn or Lightning).

- The ``.ckpt``: ``Trainer.save_checkpoint`` of solo-learn's Checkpointer callback
  (``solo/utils/checkpointer.py``: ``trained_models/<method>/<version>/<name>-<version>-ep=<N>.ckpt``);
  Lightning's ``_dump_checkpoint`` writes the keys in :data:`LIGHTNING_KEYS`, plus ``hparams_name`` and
  ``hyper_parameters`` when the module called ``save_hyperparameters`` (solo-learn's argparse-era methods
  passed their args as keyword arguments; the current ``BaseMethod(cfg)`` does not call it).
- ``args.json`` next to it: ``Checkpointer.save_args`` dumps ``OmegaConf.to_container(cfg)`` plus
  ``wandb_run_id`` with ``json.dump(..., default=lambda o: "<not serializable>")``.
- The backbone: ``BaseMethod.__init__`` replaces a ResNet's conv1 by ``nn.Conv2d(3, 64, 3, 1, 2)`` and its
  max-pool by ``nn.Identity`` when ``cfg.data.dataset in ["cifar10", "cifar100"]``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn
from torchvision.models import resnet18

LIGHTNING_KEYS = ("epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops", "callbacks",
                  "optimizer_states", "lr_schedulers")


def solo_cfg(method: str, dataset: str) -> OmegaConf:
    """The cfg of solo-learn's scripts/pretrain/cifar/<method>.yaml (the keys BaseMethod reads)."""
    return OmegaConf.create({
        "name": f"{method}-{dataset}", "method": method, "backbone": {"name": "resnet18", "kwargs": {}},
        "method_kwargs": {"proj_hidden_dim": 2048, "proj_output_dim": 2048},
        "data": {"dataset": dataset, "train_path": "./datasets", "val_path": "./datasets", "format": "image_folder",
                 "num_workers": 4, "num_classes": 10, "num_large_crops": 2, "num_small_crops": 0},
        "optimizer": {"name": "lars", "batch_size": 256, "lr": 0.3, "classifier_lr": 0.1, "weight_decay": 1e-4},
        "scheduler": {"name": "warmup_cosine"}, "checkpoint": {"enabled": True, "dir": "trained_models", "frequency": 1},
        "max_epochs": 1000, "accumulate_grad_batches": 1})


def write_args_json(folder: Path, method: str, dataset: str) -> Path:
    """``Checkpointer.save_args``: the cfg as JSON, with ``wandb_run_id``."""
    args = OmegaConf.to_container(solo_cfg(method, dataset))
    args["wandb_run_id"] = None
    path = folder / "args.json"
    with open(path, "w") as f:
        json.dump(args, f, default=lambda o: "<not serializable>")
    return path


def solo_backbone(dataset: str, seed: int = 0) -> nn.Module:
    """solo-learn's resnet18 backbone for ``dataset`` (CIFAR stem with padding 2 on cifar10/100), with BN
    statistics that matter (so a wrong stem changes the output)."""
    torch.manual_seed(seed)
    model = resnet18()
    model.fc = nn.Identity()
    if dataset in ("cifar10", "cifar100"):
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
        model.maxpool = nn.Identity()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def write_solo_ckpt(root: Path, backbone: nn.Module, method: str = "vicreg", dataset: str = "cifar10",
                    hparams: bool = False, args_json: bool = True) -> Path:
    """A VICReg-style solo-learn run folder: the Lightning ``.ckpt`` (backbone, projector, online classifier)
    and, with ``args_json``, the Checkpointer's ``args.json``; ``hparams``: the argparse era's saved hyper-parameters."""
    version = "offline-ab12cd34"
    folder = root / "trained_models" / method / version
    folder.mkdir(parents=True)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    torch.manual_seed(1)
    state.update({"projector.0.weight": torch.randn(64, 512), "projector.0.bias": torch.zeros(64),
                  "classifier.weight": torch.randn(10, 512), "classifier.bias": torch.zeros(10)})
    ckpt = {"epoch": 999, "global_step": 195000, "pytorch-lightning_version": "2.0.9", "state_dict": state,
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"completed": 999}}}},
            "callbacks": {}, "optimizer_states": [], "lr_schedulers": []}
    if hparams:  # argparse era: BaseMethod(**vars(args)) and save_hyperparameters()
        ckpt["hparams_name"] = "kwargs"
        ckpt["hyper_parameters"] = {"method": method, "backbone": "resnet18", "dataset": dataset, "max_epochs": 1000}
    path = folder / f"{method}-{dataset}-{version}-ep=999.ckpt"
    torch.save(ckpt, path)
    if args_json:
        write_args_json(folder, method, dataset)
    return path
