import pytest
import torch

from fastdet.engine.schedule import WarmupSchedule, lr_factor


def test_warmup_is_linear_from_warmup_factor_to_one():
    kw = dict(total_iters=1000, warmup_iters=100, warmup_factor=0.001, schedule="constant")
    assert lr_factor(0, **kw) == pytest.approx(0.001)
    assert lr_factor(50, **kw) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(100, **kw) == 1.0
    assert lr_factor(999, **kw) == 1.0


def test_multistep_divides_at_each_milestone():
    kw = dict(total_iters=100, warmup_iters=0, schedule="multistep", milestones=(60, 90), gamma=0.1)
    assert [lr_factor(i, **kw) for i in (0, 59, 60, 89, 90, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_reaches_zero_at_the_end():
    kw = dict(total_iters=100, warmup_iters=0, schedule="cosine")
    assert lr_factor(0, **kw) == 1.0
    assert lr_factor(50, **kw) == pytest.approx(0.5)
    assert lr_factor(100, **kw) == pytest.approx(0.0, abs=1e-12)


def test_scheduler_state_resumes_the_iteration():
    p = torch.nn.Parameter(torch.zeros(1))
    kw = dict(total_iters=10, warmup_iters=4, schedule="multistep", milestones=(6,))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = WarmupSchedule(opt, **kw)
    for _ in range(7):
        opt.step()
        sched.step()
    opt2 = torch.optim.SGD([p], lr=1.0)
    sched2 = WarmupSchedule(opt2, **kw)
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"]) == pytest.approx(0.1)


def test_unknown_schedule_is_rejected():
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="lr schedule"):
        WarmupSchedule(torch.optim.SGD([p], lr=1.0), total_iters=10, warmup_iters=0, schedule="linear")
