"""fastdet::sigmoid_focal_loss against torchvision and the pure-PyTorch reference."""

import pytest
import torch
import torchvision

from conftest import tol
from fastdet import ops
from fastdet.ops._reference import sigmoid_focal_loss as ref

REDUCTIONS = ["none", "mean", "sum"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (alpha, gamma): default, plain BCE (gamma 0, no alpha), non-integer gammas, gamma 1.
PARAMS = [(0.25, 2.0), (-1.0, 0.0), (0.5, 1.5), (0.25, 0.5), (0.75, 1.0), (-1.0, 3.0)]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def logits(shape, dtype=torch.float32, device="cpu", seed=0, scale=4.0):
    return (torch.randn(shape, generator=gen(seed), dtype=torch.float64) * scale).to(dtype=dtype, device=device)


def hard_targets(shape, dtype=torch.float32, device="cpu", seed=1, p=0.1):
    return (torch.rand(shape, generator=gen(seed)) < p).to(dtype=dtype, device=device)


def soft_targets(shape, dtype=torch.float32, device="cpu", seed=2):
    t = torch.rand(shape, generator=gen(seed), dtype=torch.float64)
    t[t < 0.3] = 0.0  # mostly soft, some exact zeros and ones
    t[t > 0.9] = 1.0
    return t.to(dtype=dtype, device=device)


def class_indices(n, c, device="cpu", seed=3):
    return torch.randint(0, c + 1, (n,), generator=gen(seed)).to(device)  # c = background


# ---- values and gradients against torchvision --------------------------------------------------------


@pytest.mark.parametrize("alpha,gamma", PARAMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_torchvision_values_and_grads(alpha, gamma, reduction, device):
    for targets in (hard_targets((67, 13), device=device), soft_targets((67, 13), device=device)):
        for dtype, kw in ((torch.float64, {}), (torch.float32, {"rtol": 1e-5, "atol": 1e-5})):
            x = logits((67, 13), dtype=dtype, device=device)
            t = targets.to(dtype)
            x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
            mine = ops.sigmoid_focal_loss(x1, t, alpha, gamma, reduction)
            theirs = torchvision.ops.sigmoid_focal_loss(x2, t, alpha, gamma, reduction)
            torch.testing.assert_close(mine, theirs, **kw)
            w = torch.rand(mine.shape, generator=gen(4), dtype=torch.float64).to(dtype=dtype, device=device)
            (mine * w).sum().backward()
            (theirs * w).sum().backward()
            torch.testing.assert_close(x1.grad, x2.grad, **kw)


def test_default_arguments_match_torchvision():
    x, t = logits((10, 80)), hard_targets((10, 80))
    torch.testing.assert_close(ops.sigmoid_focal_loss(x, t), torchvision.ops.sigmoid_focal_loss(x, t))


@pytest.mark.parametrize("shape", [(), (7,), (2, 3, 5), (2, 3, 4, 5)])
def test_any_shape_dense(shape, device):
    x, t = logits(shape, device=device), soft_targets(shape, device=device)
    for reduction in REDUCTIONS:
        torch.testing.assert_close(ops.sigmoid_focal_loss(x, t, reduction=reduction),
                                   torchvision.ops.sigmoid_focal_loss(x, t, reduction=reduction))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_reference_all_dtypes(dtype, reduction, device):
    x, t = logits((33, 20), dtype=dtype, device=device), soft_targets((33, 20), dtype=dtype, device=device)
    for alpha, gamma in ((0.25, 2.0), (0.5, 1.5)):
        out = ops.sigmoid_focal_loss(x, t, alpha, gamma, reduction)
        assert out.dtype == dtype
        torch.testing.assert_close(out, ref.sigmoid_focal_loss(x, t, alpha, gamma, reduction), **tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_gradients_use_fp32_math(dtype, device):
    # Compare with the fp64 reference on the same (rounded) inputs, then cast: torch's own fp16
    # autograd accumulates in half and would differ from fp32 math.
    x, t = logits((40, 16), dtype=dtype, device=device, seed=5), soft_targets((40, 16), dtype=dtype, device=device)
    for reduction in REDUCTIONS:
        x1 = x.clone().requires_grad_()
        x2 = x.double().requires_grad_()
        ops.sigmoid_focal_loss(x1, t, reduction=reduction).sum().backward()
        ref.sigmoid_focal_loss(x2, t.double(), reduction=reduction).sum().backward()
        assert x1.grad.dtype == dtype
        torch.testing.assert_close(x1.grad, x2.grad.to(dtype), **tol(dtype))


# ---- class-index targets (mmcv semantics) ----------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.0), (0.5, 1.5)])
def test_class_indices_match_one_hot(reduction, alpha, gamma, device):
    n, c = 53, 11
    labels = class_indices(n, c, device=device)
    labels[:3] = torch.tensor([0, c - 1, c])  # first class, last class, background
    one_hot = ref.dense_targets(torch.empty(n, c), labels.cpu()).to(device)
    assert one_hot[2].sum() == 0
    x = logits((n, c), dtype=torch.float64, device=device)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = ops.sigmoid_focal_loss(x1, labels, alpha, gamma, reduction)
    b = ops.sigmoid_focal_loss(x2, one_hot.double(), alpha, gamma, reduction)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, torchvision.ops.sigmoid_focal_loss(x, one_hot.double(), alpha, gamma, reduction))
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_class_indices_batched_shape(device):
    x = logits((2, 17, 5), device=device)
    labels = torch.randint(0, 6, (2, 17), generator=gen(6)).to(device)
    dense = ref.dense_targets(x, labels)
    torch.testing.assert_close(ops.sigmoid_focal_loss(x, labels), ops.sigmoid_focal_loss(x, dense))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_class_indices_all_dtypes(dtype, device):
    x = logits((29, 9), dtype=dtype, device=device)
    labels = class_indices(29, 9, device=device)
    for reduction in REDUCTIONS:
        torch.testing.assert_close(ops.sigmoid_focal_loss(x, labels, reduction=reduction),
                                   ref.sigmoid_focal_loss(x, labels, reduction=reduction), **tol(dtype))


# ---- weights -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets_form", ["dense", "index"])
@pytest.mark.parametrize("kind", ["element", "sample", "sample_col", "class", "class_row"])
def test_weights(kind, targets_form, device):
    n, c = 31, 7
    x = logits((n, c), dtype=torch.float64, device=device)
    labels = class_indices(n, c, device=device)
    t = labels if targets_form == "index" else ref.dense_targets(x, labels)
    shape = {"element": (n, c), "sample": (n,), "sample_col": (n, 1), "class": (c,), "class_row": (1, c)}[kind]
    w = torch.rand(shape, generator=gen(7), dtype=torch.float64).to(device)
    full = w.unsqueeze(-1).expand(n, c) if kind == "sample" else w.expand(n, c)
    plain = ops.sigmoid_focal_loss(x, t)
    torch.testing.assert_close(ops.sigmoid_focal_loss(x, t, weight=w), plain * full)
    for reduction in REDUCTIONS:
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        a = ops.sigmoid_focal_loss(x1, t, reduction=reduction, weight=w)
        b = ref.sigmoid_focal_loss(x2, t, reduction=reduction, weight=w)
        torch.testing.assert_close(a, b)
        a.sum().backward()
        b.sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)


def test_weight_in_half_and_other_dtype(device):
    x, t = logits((12, 6), dtype=torch.float16, device=device), hard_targets((12, 6), dtype=torch.float16, device=device)
    w = torch.rand(6, generator=gen(8)).to(device)  # fp32 weight with fp16 logits: converted
    torch.testing.assert_close(ops.sigmoid_focal_loss(x, t, weight=w), ref.sigmoid_focal_loss(x, t, weight=w), **tol(torch.float16))


def test_weight_ambiguous_shape_raises():
    x, t = logits((5, 5)), hard_targets((5, 5))
    with pytest.raises(RuntimeError, match=r"fastdet::sigmoid_focal_loss: weight of shape \[5\] is ambiguous"):
        ops.sigmoid_focal_loss(x, t, weight=torch.ones(5))
    # the explicit forms work
    torch.testing.assert_close(ops.sigmoid_focal_loss(x, t, weight=torch.full((5, 1), 2.0)), 2 * ops.sigmoid_focal_loss(x, t))
    torch.testing.assert_close(ops.sigmoid_focal_loss(x, t, weight=torch.full((1, 5), 2.0)), 2 * ops.sigmoid_focal_loss(x, t))


# ---- numerics --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_extreme_logits_finite_and_accurate(dtype, device):
    v = torch.tensor([100.0, -100.0, 60.0, -60.0, 30.0, -30.0, 17.0, -17.0, 9.4, -9.4, 0.0, 1e-3])
    x = v.repeat_interleave(3).to(dtype)
    t = torch.tensor([0.0, 1.0, 0.4]).repeat(len(v)).to(dtype)
    for gamma in (2.0, 1.5, 0.0, 0.5):
        for reduction in REDUCTIONS:
            xg = x.to(device).clone().requires_grad_()
            loss = ops.sigmoid_focal_loss(xg, t.to(device), 0.25, gamma, reduction)
            loss.sum().backward()
            assert torch.isfinite(loss).all() and torch.isfinite(xg.grad).all(), (gamma, reduction)
            x64 = x.detach().double().requires_grad_()
            expected = ref.sigmoid_focal_loss(x64, t.double(), 0.25, gamma, reduction)
            expected.sum().backward()
            torch.testing.assert_close(loss.cpu(), expected.to(dtype), **tol(dtype))
            # torch's pow backward gives 0 * inf = NaN where 1 - p_t rounds to 0 and gamma < 1; the
            # limit there is 0 (as fastdet returns), so compare where the reference is finite.
            ok = torch.isfinite(x64.grad)
            assert ok.sum() >= len(x) - 8
            torch.testing.assert_close(xg.grad.cpu()[ok], x64.grad[ok].to(dtype), **tol(dtype))


def test_nan_logits_give_nan(device):
    x, t = logits((4, 3), device=device), hard_targets((4, 3), device=device)
    x[1, 2] = float("nan")
    out = ops.sigmoid_focal_loss(x, t)
    assert torch.isnan(out[1, 2]) and torch.isfinite(out[0]).all() and torch.isfinite(out[2:]).all()
    assert torch.isnan(ops.sigmoid_focal_loss(x, t, reduction="sum"))


def test_non_contiguous(device):
    x = logits((20, 16), device=device).t()
    t = soft_targets((20, 16), device=device).t()
    assert not x.is_contiguous()
    torch.testing.assert_close(ops.sigmoid_focal_loss(x, t), ops.sigmoid_focal_loss(x.contiguous(), t.contiguous()))
    # odd offsets (misaligned for vector loads on CUDA)
    xs, ts = logits((1001,), device=device)[1:], soft_targets((1001,), device=device)[1:]
    torch.testing.assert_close(ops.sigmoid_focal_loss(xs, ts), torchvision.ops.sigmoid_focal_loss(xs, ts))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_inputs(reduction, device):
    for x, t in ((torch.zeros(0, 80, device=device), torch.zeros(0, 80, device=device)),
                 (torch.zeros(0, 80, device=device), torch.zeros(0, dtype=torch.long, device=device)),
                 (torch.zeros(5, 0, device=device), torch.zeros(5, 0, device=device))):
        xg = x.requires_grad_()
        out = ops.sigmoid_focal_loss(xg, t, reduction=reduction)
        assert out.shape == (x.shape if reduction == "none" else ())
        if reduction != "none":
            assert out.item() == 0.0
        out.sum().backward()
        assert xg.grad.shape == x.shape


def test_reduction_is_deterministic(device):
    x, t = logits((3000, 80), device=device, scale=3.0), hard_targets((3000, 80), device=device)
    a = ops.sigmoid_focal_loss(x, t, reduction="sum")
    for _ in range(3):
        assert torch.equal(ops.sigmoid_focal_loss(x, t, reduction="sum"), a)
    torch.testing.assert_close(a.double(), ref.sigmoid_focal_loss(x.double(), t.double(), reduction="sum"), rtol=1e-6, atol=0)


# ---- gradients -------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.4, 1.5), (-1.0, 0.0), (0.25, 1.0)])
def test_gradcheck(reduction, alpha, gamma, device):
    x = logits((6, 5), dtype=torch.float64, device=device, scale=2.0).requires_grad_()
    t = soft_targets((6, 5), dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(lambda a: ops.sigmoid_focal_loss(a, t, alpha, gamma, reduction), (x,))
    labels = class_indices(6, 5, device=device)
    w = torch.rand(6, generator=gen(9), dtype=torch.float64).to(device)
    assert torch.autograd.gradcheck(lambda a: ops.sigmoid_focal_loss(a, labels, alpha, gamma, reduction, w), (x,))


def test_double_backward_raises():
    x = logits((3, 4), dtype=torch.float64).requires_grad_()
    (g,) = torch.autograd.grad(ops.sigmoid_focal_loss(x, hard_targets((3, 4), torch.float64)).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


# ---- PyTorch integration ---------------------------------------------------------------------------


def test_opcheck(device):
    x, t = logits((8, 6), device=device), soft_targets((8, 6), device=device)
    labels = class_indices(8, 6, device=device)
    w = torch.rand(8, 6, generator=gen(10)).to(device)
    op = torch.ops.fastdet.sigmoid_focal_loss.default
    torch.library.opcheck(op, (x.clone().requires_grad_(), t, 0.5, 1.5, "none", w))
    torch.library.opcheck(op, (x.clone().requires_grad_(), labels, 0.25, 2.0, "mean", w[:, 0]))
    bwd = torch.ops.fastdet._sigmoid_focal_loss_backward.default
    torch.library.opcheck(bwd, (torch.tensor(0.5, device=device), x, labels, 0.25, 1.5, "sum", w))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager", dynamic=True)
    def f(x, t, labels):
        return ops.sigmoid_focal_loss(x, t, reduction="mean") + ops.sigmoid_focal_loss(x, labels, reduction="sum") / 10

    x, t, labels = logits((16, 5)), soft_targets((16, 5)), class_indices(16, 5)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = f(xc, t, labels)
    expected = ops.sigmoid_focal_loss(xe, t, reduction="mean") + ops.sigmoid_focal_loss(xe, labels, reduction="sum") / 10
    torch.testing.assert_close(out, expected)
    out.backward()
    expected.backward()
    torch.testing.assert_close(xc.grad, xe.grad)


def test_autocast(device):
    x, t = logits((8, 9), device=device), hard_targets((8, 9), device=device)
    labels = class_indices(8, 9, device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out = ops.sigmoid_focal_loss(x.to(torch.bfloat16), t)  # runs in fp32
        out_idx = ops.sigmoid_focal_loss(x.to(torch.bfloat16), labels, reduction="sum")
    assert out.dtype == torch.float32 and out_idx.dtype == torch.float32
    torch.testing.assert_close(out, ops.sigmoid_focal_loss(x.to(torch.bfloat16).float(), t))
    torch.testing.assert_close(out_idx, ops.sigmoid_focal_loss(x.to(torch.bfloat16).float(), labels, reduction="sum"))


def test_module():
    m = ops.SigmoidFocalLoss(alpha=0.5, gamma=1.5, reduction="sum")
    assert "gamma=1.5" in repr(m)
    x, t = logits((6, 4)), hard_targets((6, 4))
    torch.testing.assert_close(m(x, t), torchvision.ops.sigmoid_focal_loss(x, t, 0.5, 1.5, "sum"))
    w = torch.rand(6, generator=gen(11))
    torch.testing.assert_close(m(x, t, w), ops.sigmoid_focal_loss(x, t, 0.5, 1.5, "sum", w))
    with pytest.raises(RuntimeError, match="reduction must be"):
        ops.SigmoidFocalLoss(reduction="avg")


# ---- input validation ------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(device):
    x, t = logits((4, 3), device=device), hard_targets((4, 3), device=device)
    name = r"fastdet::sigmoid_focal_loss: "
    with pytest.raises(RuntimeError, match=name + "dense targets must have the inputs' shape"):
        ops.sigmoid_focal_loss(x, t[:, :2])
    with pytest.raises(RuntimeError, match=name + r"class-index targets \(int64\) must have shape"):
        ops.sigmoid_focal_loss(x, torch.zeros(3, dtype=torch.long, device=device))
    with pytest.raises(RuntimeError, match=name + r"class-index targets must be in \[0, C\] = \[0, 3\].*got values in \[0, 4\]"):
        ops.sigmoid_focal_loss(x, torch.tensor([0, 1, 4, 3], device=device))
    with pytest.raises(RuntimeError, match=name + r"class-index targets must be in \[0, C\].*\[-1, 2\]"):
        ops.sigmoid_focal_loss(x, torch.tensor([0, 1, -1, 2], device=device))
    with pytest.raises(RuntimeError, match=name + "targets must be a floating tensor .* or an int64"):
        ops.sigmoid_focal_loss(x, t.int())
    with pytest.raises(RuntimeError, match=name + "inputs must be a floating-point tensor"):
        ops.sigmoid_focal_loss(x.long(), t)
    with pytest.raises(RuntimeError, match=name + "reduction must be 'none', 'mean' or 'sum', got 'avg'"):
        ops.sigmoid_focal_loss(x, t, reduction="avg")
    with pytest.raises(RuntimeError, match=name + "gamma must be finite and >= 0"):
        ops.sigmoid_focal_loss(x, t, gamma=-1.0)
    with pytest.raises(RuntimeError, match=name + "alpha must be a number"):
        ops.sigmoid_focal_loss(x, t, alpha=float("nan"))
    with pytest.raises(RuntimeError, match=name + "weight must have the inputs' shape"):
        ops.sigmoid_focal_loss(x, t, weight=torch.ones(2, device=device))
    with pytest.raises(RuntimeError, match=name + "weight must be a floating-point tensor"):
        ops.sigmoid_focal_loss(x, t, weight=torch.ones(4, 3, dtype=torch.long, device=device))
    with pytest.raises(RuntimeError, match=r"fastdet::_sigmoid_focal_loss_backward: grad must have the forward output's shape"):
        torch.ops.fastdet._sigmoid_focal_loss_backward(torch.ones(3, device=device), x, t, 0.25, 2.0, "none", None)


@pytest.mark.cuda
def test_device_mismatch_raises():
    x, t = logits((4, 3)), hard_targets((4, 3))
    with pytest.raises(RuntimeError, match=r"fastdet::sigmoid_focal_loss: inputs and targets must be on the same device"):
        ops.sigmoid_focal_loss(x.cuda(), t)
    with pytest.raises(RuntimeError, match=r"fastdet::sigmoid_focal_loss: inputs and weight must be on the same device"):
        ops.sigmoid_focal_loss(x.cuda(), t.cuda(), weight=torch.ones(3))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_cpu_large(dtype):
    # RetinaNet-like: many anchors x 80 classes, every target form and reduction (fewer anchors in
    # fp16, whose range would overflow the 'sum' of 1.6M losses).
    n = 4001 if dtype == torch.float16 else 20001
    x = logits((n, 80), dtype=dtype, scale=3.0)
    t = hard_targets((n, 80), dtype=dtype, p=0.01)
    labels = class_indices(n, 80)
    w = torch.rand(n, generator=gen(12)).to(dtype)
    rt = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-5)}.get(dtype, (tol(dtype)["rtol"], tol(dtype)["atol"]))
    for targets, weight in ((t, None), (labels, w), (t, w.unsqueeze(-1))):
        for reduction in REDUCTIONS:
            xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
            a = ops.sigmoid_focal_loss(xc, targets, reduction=reduction, weight=weight)
            b = ops.sigmoid_focal_loss(xg, targets.cuda(), reduction=reduction,
                                       weight=None if weight is None else weight.cuda())
            assert a.isfinite().all()
            torch.testing.assert_close(b.cpu(), a, rtol=rt[0], atol=rt[1] * (1 if reduction == "none" else 1e3))
            a.sum().backward()
            b.sum().backward()
            torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=rt[0], atol=rt[1])


@pytest.mark.cuda
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("targets_form", ["dense", "indices"])
def test_cuda_graph_capture(reduction, targets_form):
    # Captured forward (and forward + backward) replayed on new inputs equals eager on them: no host
    # sync (the class-index range check is skipped during capture), no stale buffers.
    from fastdet.testing import cuda_graph_replay

    n, c = 64, 80

    def make(seed):
        x = logits((n, c), device="cuda", seed=seed)
        t = (soft_targets((n, c), device="cuda", seed=seed + 1) if targets_form == "dense"
             else class_indices(n, c, device="cuda", seed=seed + 1))
        return x, t, torch.rand(n, 1, generator=gen(seed + 2)).cuda()

    def fn(x, t, w):
        return ops.sigmoid_focal_loss(x, t, 0.25, 2.0, reduction, w)

    for grad_inputs in ((), (0,)):
        (out, grads), (expected, expected_grads) = cuda_graph_replay(fn, make(0), make(10), grad_inputs)
        assert not torch.allclose(out, fn(*make(0)))  # the replay used the new inputs
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
