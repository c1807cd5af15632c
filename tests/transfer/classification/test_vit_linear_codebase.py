"""MAE's own code that the ViT linear engine reproduces (transfer/classification/vit.py): util/lars.py, util/lr_sched.py
per iteration, util/crop.py's crop boxes, and DINO's / MAE's bicubic validation transform; each held against a
verbatim copy of the codebase's code (and mmpretrain's stock component shown to differ where one exists)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from classification_fixtures import mmpretrain  # noqa: F401 - fixture
from transfer.classification.vit import DINO_CONFIG, MAE_CONFIG, MaeLARS, require_vit_modules


@pytest.fixture(scope="module", autouse=True)
def vit_modules(mmpretrain):  # noqa: F811 - the fixture of classification_fixtures
    require_vit_modules()


class _MaeLarsVerbatim(torch.optim.Optimizer):
    """MAE's util/lars.py:14-47, verbatim but for the docstring."""
    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, trust_coefficient=0.001):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g['params']:
                dp = p.grad

                if dp is None:
                    continue

                if p.ndim > 1: # if not normalization gamma/beta or bias  # noqa: E261,E262
                    dp = dp.add(p, alpha=g['weight_decay'])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.,
                                    torch.where(update_norm > 0,
                                    (g['trust_coefficient'] * param_norm / update_norm), one),
                                    one)
                    dp = dp.mul(q)

                param_state = self.state[p]
                if 'mu' not in param_state:
                    param_state['mu'] = torch.zeros_like(p)
                mu = param_state['mu']
                mu.mul_(g['momentum']).add_(dp)
                p.add_(mu, alpha=-g['lr'])


def _adjust_learning_rate(optimizer, epoch, args):
    """MAE's util/lr_sched.py:9-21, verbatim."""
    if epoch < args.warmup_epochs:
        lr = args.lr * epoch / args.warmup_epochs
    else:
        lr = args.min_lr + (args.lr - args.min_lr) * 0.5 * \
            (1. + math.cos(math.pi * (epoch - args.warmup_epochs) / (args.epochs - args.warmup_epochs)))
    for param_group in optimizer.param_groups:
        if "lr_scale" in param_group:
            param_group["lr"] = lr * param_group["lr_scale"]
        else:
            param_group["lr"] = lr
    return lr


def test_mae_schedule_and_lars_equal_mae_code_where_mmpretrain_lars_does_not() -> None:
    """The engine's scheduler (built as the Runner builds it, per iteration) gives util/lr_sched.py's lr at every
    iteration; MaeLARS under that lr moves a head exactly as util/lars.py; mmpretrain's LARS (lr inside the
    momentum buffer, eps) does not."""
    import argparse

    from mmengine.optim import OptimWrapper
    from mmpretrain.engine.optimizers import LARS
    from mmpretrain.registry import PARAM_SCHEDULERS

    length, epochs, warmup, base = 7, 5, 2, 6.4
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 10)
    copies = [torch.nn.Linear(16, 10) for _ in range(3)]
    for c in copies:
        c.load_state_dict(head.state_dict())
    ours, verbatim = MaeLARS(copies[0].parameters(), lr=base), _MaeLarsVerbatim(copies[1].parameters(), lr=base)
    mmpre = LARS(copies[2].parameters(), lr=base, momentum=0.9)
    wrapper = OptimWrapper(ours)  # the Runner steps the wrapper, the scheduler counts its steps
    schedule = PARAM_SCHEDULERS.build(dict(type="MaeWarmupCosineLR", warmup=warmup, total=epochs, by_epoch=True, begin=0,
                                           end=epochs, convert_to_iter_based=True),
                                      default_args=dict(optimizer=wrapper, epoch_length=length))
    args = argparse.Namespace(lr=base, warmup_epochs=warmup, epochs=epochs, min_lr=0.0)
    lr_diff = 0.0
    for epoch in range(epochs):
        for step in range(length):
            want = _adjust_learning_rate(verbatim, step / length + epoch, args)
            lr_diff = max(lr_diff, abs(ours.param_groups[0]["lr"] - want))
            mmpre.param_groups[0]["lr"] = want
            x, y = torch.randn(8, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
            for model, opt in zip(copies, (wrapper, verbatim, mmpre)):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            schedule.step()
    ours_diff = max((a - b).abs().max().item() for a, b in zip(copies[0].parameters(), copies[1].parameters()))
    mmpre_diff = max((a - b).abs().max().item() for a, b in zip(copies[2].parameters(), copies[1].parameters()))
    print(f"max |lr - lr_sched| {lr_diff:.1e}; after {epochs * length} steps max |w - MAE LARS|: MaeLARS {ours_diff:.1e}, "
          f"mmpretrain LARS {mmpre_diff:.1e}")
    assert lr_diff < 1e-12 and ours_diff == 0.0 and mmpre_diff > 1e-3


@pytest.mark.parametrize("config", [DINO_CONFIG, MAE_CONFIG])
def test_val_pipeline_equals_torchvision_bicubic(config: Path, tmp_path: Path) -> None:
    """eval_linear.py:65-70 / main_linprobe.py:137-141: Resize(256, interpolation=3), CenterCrop(224), Normalize."""
    import numpy as np
    from mmengine.config import Config
    from mmengine.dataset import Compose
    from mmpretrain.registry import MODELS
    from PIL import Image
    from torchvision import transforms

    path = tmp_path / "x.JPEG"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 410, 3), dtype=np.uint8)).save(path)
    cfg = Config.fromfile(str(config))
    data = Compose(cfg.val_dataloader.dataset.pipeline)(dict(img_path=str(path)))
    ours = MODELS.build(cfg.data_preprocessor)(dict(inputs=[data["inputs"]], data_samples=[data["data_samples"]]),
                                               False)["inputs"][0]
    tv = transforms.Compose([transforms.Resize(256, interpolation=3), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    expected = tv(Image.open(path).convert("RGB"))
    assert ours.shape == expected.shape == (3, 224, 224)
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()


def _mae_crop_get_params(height: int, width: int, scale, ratio) -> tuple[int, int, int, int]:
    """MAE's util/crop.py:22-42 (get_params), verbatim but for the image size passed in."""
    area = height * width

    target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
    log_ratio = torch.log(torch.tensor(ratio))
    aspect_ratio = torch.exp(
        torch.empty(1).uniform_(log_ratio[0], log_ratio[1])
    ).item()

    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))

    w = min(w, width)
    h = min(h, height)

    i = torch.randint(0, height - h + 1, size=(1,)).item()
    j = torch.randint(0, width - w + 1, size=(1,)).item()

    return i, j, h, w


def test_mae_crop_draws_as_mae_util_crop() -> None:
    """The crop boxes' distribution (one draw, clipped to the image) matches util/crop.py's on a wide image, where
    torchvision's / mmpretrain's retries would give another one: mean width and height within 2 %, 4000 draws each."""
    import numpy as np
    from mmpretrain.datasets.transforms import RandomResizedCrop
    from mmpretrain.registry import TRANSFORMS

    img = np.zeros((40, 120, 3), dtype=np.uint8)
    scale, ratio, n = (0.08, 1.0), (3 / 4, 4 / 3), 4000
    ours_t = TRANSFORMS.build(dict(type="MaeRandomResizedCrop", scale=224, crop_ratio_range=scale,
                                   aspect_ratio_range=ratio))
    mmpre_t = RandomResizedCrop(scale=224, crop_ratio_range=scale, aspect_ratio_range=ratio)
    np.random.seed(0)
    torch.manual_seed(0)
    ours = np.array([ours_t.rand_crop_params(img)[2:] for _ in range(n)], dtype=np.float64).mean(0)
    mmpre = np.array([mmpre_t.rand_crop_params(img)[2:] for _ in range(n)], dtype=np.float64).mean(0)
    mae = np.array([_mae_crop_get_params(40, 120, scale, ratio)[2:] for _ in range(n)], dtype=np.float64).mean(0)
    print(f"mean (h, w) of crop boxes on 40x120: ours {ours.round(2)}, MAE {mae.round(2)}, mmpretrain {mmpre.round(2)}")
    assert np.all(np.abs(ours / mae - 1) < 0.02) and np.any(np.abs(mmpre / mae - 1) > 0.05)
