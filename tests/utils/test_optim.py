"""`ofa.utils.optim`: per-module lr multipliers (`optim.lr_scale`) in the AdamW groups and the schedule."""
from __future__ import annotations

import pytest
from torch import nn

from ofa.utils.optim import OptimConfig, ScheduleConfig, build_optimizer, build_scheduler, lr_multiplier


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image_proj = nn.Linear(4, 4)
        self.image_projection = nn.Linear(4, 4)
        self.decoder = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))


def test_keys_match_whole_dotted_components_longest_first() -> None:
    scale = {"image_proj": 0.1, "decoder": 0.5, "decoder.1": 2.0}
    assert lr_multiplier("encoder.image_proj.weight", scale) == 0.1
    assert lr_multiplier("encoder.image_projection.weight", scale) == 1.0  # not a whole component
    assert lr_multiplier("decoder.0.weight", scale) == 0.5
    assert lr_multiplier("decoder.1.bias", scale) == 2.0  # the longer key wins


def test_groups_get_scaled_peak_lrs_and_the_schedule_keeps_the_ratio() -> None:
    net = Net()
    opt = build_optimizer(net, OptimConfig(lr=1e-3, weight_decay=0.01, lr_scale={"image_proj": 0.1}))
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(net.image_proj.weight)] == pytest.approx(1e-4) and lr_of[id(net.image_proj.bias)] == pytest.approx(1e-4)
    assert lr_of[id(net.image_projection.weight)] == pytest.approx(1e-3)
    assert decay_of[id(net.image_proj.weight)] == 0.01 and decay_of[id(net.image_proj.bias)] == 0.0
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)  # group 0 (logged as train/lr) is unscaled
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=2, warmup_ratio=0.0), total_steps=10)
    for _ in range(3):
        opt.step()
        sched.step()
    lrs = {g["lr"] for g in opt.param_groups}
    assert len(lrs) == 2 and max(lrs) / min(lrs) == pytest.approx(10.0)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))


def test_a_bad_multiplier_is_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"optim.lr_scale.image_proj=0"):
        OptimConfig(lr_scale={"image_proj": 0.0})


def test_the_constant_schedule_holds_the_peak_after_warmup() -> None:
    """conf/schedule/constant.yaml is power 0; it was refused (`schedule.power must be > 0`) until fixed."""
    opt = build_optimizer(Net(), OptimConfig(lr=1e-3))
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=2, warmup_ratio=0.0, power=0.0), total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([5e-4] + [1e-3] * 9)  # warmup reaches the peak at its last step
    with pytest.raises(ValueError, match=r"schedule.power=-1.0"):
        ScheduleConfig(power=-1.0)


def test_multipliers_move_to_one_over_lr_scale_steps() -> None:
    """`optim.lr_scale_steps=4`: the decoder starts at 0.1 x the lr and reaches the run's lr at step 4."""
    net = Net()
    cfg = OptimConfig(lr=1e-3, lr_scale={"decoder": 0.1}, lr_scale_steps=4)
    opt = build_optimizer(net, cfg)
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=0, warmup_ratio=0.0, power=0.0), total_steps=10,
                            lr_scale_steps=cfg.lr_scale_steps)
    decoder = next(g for g in opt.param_groups if any(p is net.decoder[0].weight for p in g["params"]))
    lrs = []
    for _ in range(6):
        lrs.append(decoder["lr"])
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)  # unscaled groups keep the schedule
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1e-4, 3.25e-4, 5.5e-4, 7.75e-4, 1e-3, 1e-3])
    with pytest.raises(ValueError, match=r"optim.lr_scale_steps=-1"):
        OptimConfig(lr_scale_steps=-1)
