"""fastdet::roi_align and fastdet::multi_scale_roi_align against torchvision, the pure-PyTorch
reference, and hand-checked edge cases."""

import pytest
import torch
import torchvision

from conftest import tol
from fastdet import ops
from fastdet.ops._reference import roi_align as ref

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
OP = torch.ops.fastdet.roi_align.default
BACKWARD = torch.ops.fastdet._roi_align_backward.default
MULTI = torch.ops.fastdet.multi_scale_roi_align.default
MULTI_BACKWARD = torch.ops.fastdet._multi_scale_roi_align_backward.default


def make_rois(k, n, h, w, scale=1.0, seed=0, margin=2.0, max_side=None, dtype=torch.float64, device="cpu"):
    """rois [k, 5] in image coordinates (feature size / scale): corners anywhere in the map widened
    by `margin` feature pixels (some RoIs partly or wholly outside), ~10% zero-size."""
    g = torch.Generator().manual_seed(seed)
    ih, iw = h / scale, w / scale
    m = margin / scale
    max_side = max_side if max_side is not None else max(ih, iw) / 2
    xy = torch.rand(k, 2, generator=g, dtype=torch.float64) * torch.tensor([iw + 2 * m, ih + 2 * m]) - m
    wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * max_side
    wh[torch.rand(k, generator=g) < 0.1] = 0
    idx = torch.randint(0, n, (k, 1), generator=g).double()
    return torch.cat([idx, xy, xy + wh], 1).to(device=device, dtype=dtype)


def make(n=2, c=3, h=7, w=9, k=12, dtype=torch.float32, device="cpu", seed=0, scale=1.0, **kw):
    g = torch.Generator().manual_seed(seed + 1000)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return x, make_rois(k, n, h, w, scale, seed, dtype=dtype, device=device, **kw)


def grads(fn, x, *args, weight=None, **kwargs):
    x = x.detach().clone().requires_grad_()
    out = fn(x, *args, **kwargs)
    w = weight if weight is not None else torch.ones_like(out, dtype=torch.float32)
    (out.float() * w).sum().backward()
    return out, x.grad


# ---- against torchvision and the reference ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio,output_size", [(-1, 7), (1, (3, 5)), (2, 2)])
def test_matches_torchvision(dtype, aligned, sampling_ratio, output_size, device):
    x, rois = make(c=4, h=11, w=13, k=20, dtype=dtype, device=device, seed=sampling_ratio + 3 * aligned, scale=0.5)
    args = (output_size, 0.5, sampling_ratio, aligned)
    weight = torch.randn(20, 4, *torchvision.ops.roi_align(x, rois, *args).shape[2:], device=device)
    out, gx = grads(ops.roi_align, x, rois, *args, weight=weight)
    tv_out, tv_gx = grads(torchvision.ops.roi_align, x, rois, *args, weight=weight)
    assert out.dtype == dtype and out.shape == tv_out.shape
    torch.testing.assert_close(out, tv_out, **tol(dtype))
    torch.testing.assert_close(gx, tv_gx, **tol(dtype))


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_matches_reference(aligned, sampling_ratio, device):
    x, rois = make(c=3, k=15, dtype=torch.float64, device=device, seed=7 + sampling_ratio, scale=0.25)
    weight = torch.randn(15, 3, 4, 3, dtype=torch.float64, device=device)
    out, gx = grads(ops.roi_align, x, rois, (4, 3), 0.25, sampling_ratio, aligned, weight=weight)
    rout, rgx = grads(lambda t, *a: ref.roi_align(t.cpu(), rois.cpu(), *a), x, (4, 3), 0.25, sampling_ratio, aligned,
                      weight=weight.cpu())
    torch.testing.assert_close(out.cpu(), rout, **tol(torch.float64))
    torch.testing.assert_close(gx.cpu(), rgx.cpu(), **tol(torch.float64))


def test_list_of_boxes_equals_rois_tensor(device):
    x, rois = make(n=3, k=10, device=device, seed=2)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(3)]
    ordered = torch.cat([rois[rois[:, 0] == i] for i in range(3)])
    assert torch.equal(ops.roi_align(x, boxes, 3, 1.0, 2), ops.roi_align(x, ordered, 3, 1.0, 2))
    torch.testing.assert_close(ops.roi_align(x, boxes, 3, 1.0, 2), torchvision.ops.roi_align(x, boxes, 3, 1.0, 2))


def test_module():
    m = ops.RoIAlign((3, 2), spatial_scale=0.5, sampling_ratio=2, aligned=True)
    assert "output_size=(3, 2)" in repr(m) and "aligned=True" in repr(m)
    x, rois = make(seed=3, scale=0.5)
    assert torch.equal(m(x, rois), ops.roi_align(x, rois, (3, 2), 0.5, 2, True))
    tv = torchvision.ops.RoIAlign((3, 2), spatial_scale=0.5, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(m(x, rois), tv(x, rois))


# ---- layouts and dtypes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_channels_last_is_native_and_equal(dtype, device):
    x, rois = make(c=19, h=9, w=10, k=16, dtype=dtype, device=device, seed=4)
    x_cl = x.to(memory_format=torch.channels_last)
    weight = torch.randn(16, 19, 3, 4, device=device)
    out, gx = grads(ops.roi_align, x, rois, (3, 4), 1.0, -1, True, weight=weight)
    out_cl, gx_cl = grads(ops.roi_align, x_cl, rois, (3, 4), 1.0, -1, True, weight=weight)
    assert out_cl.is_contiguous(memory_format=torch.channels_last) and not out_cl.is_contiguous()
    assert gx_cl.is_contiguous(memory_format=torch.channels_last)
    if device == "cpu":  # same summation order in both layouts
        assert torch.equal(out_cl, out) and torch.equal(gx_cl, gx)
    else:
        torch.testing.assert_close(out_cl, out, **tol(dtype))
        torch.testing.assert_close(gx_cl.float(), gx.float(), **tol(dtype))


@pytest.mark.parametrize("k", [3, 400])
def test_nchw_kernels_few_and_many_rois(k):
    # The CPU forward reads NCHW planes for a few RoIs on a large map, and transposes the map to
    # channels-last first when many RoIs sample it; both equal the channels-last kernel bitwise.
    # The backward likewise (scratch channels-last planes, transposed at the end).
    x, rois = make(n=2, c=5, h=30, w=40, k=k, seed=k, scale=0.5)
    weight = torch.randn(k, 5, 3, 3)
    out, gx = grads(ops.roi_align, x, rois, 3, 0.5, -1, True, weight=weight)
    assert out.is_contiguous() and gx.is_contiguous()
    out_cl, gx_cl = grads(ops.roi_align, x.to(memory_format=torch.channels_last), rois, 3, 0.5, -1, True, weight=weight)
    assert torch.equal(out, out_cl) and torch.equal(gx, gx_cl)
    tv_out, tv_gx = grads(torchvision.ops.roi_align, x, rois, 3, 0.5, -1, True, weight=weight)
    torch.testing.assert_close(out, tv_out)
    torch.testing.assert_close(gx, tv_gx)


def test_other_strides_are_handled(device):
    x, rois = make(c=4, device=device, seed=5)
    sliced = torch.stack([x, x], 2).flatten(1, 2)[:, ::2]
    assert not sliced.is_contiguous()
    rois_nc = rois.t().contiguous().t()
    assert torch.equal(ops.roi_align(sliced, rois_nc, 3, 1.0, 2), ops.roi_align(x, rois, 3, 1.0, 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_half_precision_is_fp32_math_on_rounded_inputs(dtype, channels_last, device):
    x, rois = make(c=9, h=10, w=12, k=14, device=device, seed=6, scale=0.5)
    xh = x.to(dtype)
    if channels_last:
        xh = xh.to(memory_format=torch.channels_last)
    weight = torch.randn(14, 9, 5, 5, device=device)
    out, gx = grads(ops.roi_align, xh, rois, 5, 0.5, 2, True, weight=weight)  # fp32 rois with half features
    out32, gx32 = grads(ops.roi_align, xh.float(), rois, 5, 0.5, 2, True, weight=weight)
    assert out.dtype == dtype and gx.dtype == dtype
    torch.testing.assert_close(out, out32.to(dtype), rtol=0, atol=0) if device == "cpu" else \
        torch.testing.assert_close(out.float(), out32, **tol(dtype))
    torch.testing.assert_close(gx.float(), gx32, **tol(dtype))
    # half rois are read exactly (upcast), so they give the same result as their fp32 values
    assert torch.equal(ops.roi_align(xh, rois.to(dtype), 5, 0.5, 2, True),
                       ops.roi_align(xh, rois.to(dtype).float(), 5, 0.5, 2, True))


def test_empty_inputs(device):
    x, rois = make(device=device, seed=8)
    xg = x.clone().requires_grad_()
    out = ops.roi_align(xg, rois[:0], 3)
    assert out.shape == (0, 3, 3, 3)
    out.sum().backward()
    assert torch.equal(xg.grad, torch.zeros_like(x))
    for shape in [(2, 0, 7, 9), (2, 3, 0, 9), (2, 3, 7, 0)]:
        xe = torch.randn(shape, device=device, requires_grad=True)
        out = ops.roi_align(xe, rois, (2, 3), 1.0, 2)
        assert out.shape == (12, shape[1], 2, 3) and (out == 0).all()
        out.sum().backward()
        assert xe.grad.shape == shape
    assert ops.roi_align(x, [rois[:0, 1:], rois[:0, 1:]], 2).shape == (0, 3, 2, 2)


# ---- adversarial RoIs -------------------------------------------------------------------------------------------


def test_outside_degenerate_and_non_finite_rois(device):
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, device=device)
    nan, inf = float("nan"), float("inf")
    rois = torch.tensor([
        [0, -20.0, -20.0, -10.0, -10.0],  # wholly outside: 0
        [0, -3.0, 1.0, 2.5, 4.0],         # partly outside: average of the samples inside
        [0, 2.0, 2.0, 2.0, 2.0],          # zero-size
        [0, nan, 1.0, 3.0, 3.0],          # NaN: 0
        [0, 1.0, 1.0, inf, 3.0],          # inf: 0
        [0, -inf, -inf, inf, inf],
        [0, 1e30, 1.0, 2e30, 3.0],        # huge finite: far outside, bounded time
        [0, -1e6, -1e6, 1e6, 1e6],        # huge, covering the map: the adaptive grid is capped
    ], dtype=torch.float64, device=device)
    for aligned in (False, True):
        xg = x.clone().requires_grad_()
        out = ops.roi_align(xg, rois, 2, 1.0, -1, aligned)
        assert torch.isfinite(out).all()
        assert (out[[0, 3, 4, 5, 6]] == 0).all()
        out.sum().backward()
        assert torch.isfinite(xg.grad).all()
        torch.testing.assert_close(out.cpu(), ref.roi_align(x.cpu(), rois.cpu(), 2, 1.0, -1, aligned))
        finite = rois[[0, 1, 2]]  # torchvision agrees where its result is defined
        torch.testing.assert_close(ops.roi_align(x, finite, 2, 1.0, -1, aligned),
                                   torchvision.ops.roi_align(x, finite, 2, 1.0, -1, aligned))
    # aligned zero-size RoI: the adaptive grid is empty (0); a fixed grid samples the point
    point = ops.roi_align(x, rois[2:3], 1, 1.0, 1, True)
    torch.testing.assert_close(point[0, :, 0, 0], x[0, :, 1, 1] * 0.25 + x[0, :, 1, 2] * 0.25 +
                               x[0, :, 2, 1] * 0.25 + x[0, :, 2, 2] * 0.25)
    assert (ops.roi_align(x, rois[2:3], 1, 1.0, -1, True) == 0).all()


def test_rois_outside_get_no_gradient_and_nan_features_propagate(device):
    x = torch.zeros(1, 1, 4, 4, device=device)
    x[0, 0, 0, 0] = float("nan")
    rois = torch.tensor([[0, 2.0, 2.0, 3.0, 3.0], [0, 0.0, 0.0, 1.0, 1.0]], device=device)
    out = ops.roi_align(x, rois, 1, 1.0, 1, True)
    assert out[0].item() == 0 and torch.isnan(out[1]).all()
    xg = torch.zeros(1, 1, 4, 4, device=device, requires_grad=True)
    ops.roi_align(xg, torch.tensor([[0, -9.0, -9.0, -6.0, -6.0]], device=device), 2).sum().backward()
    assert (xg.grad == 0).all()


# ---- gradients -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aligned", [False, True])
def test_gradcheck(aligned, device):
    x, rois = make(n=2, c=2, h=5, w=6, k=6, dtype=torch.float64, device=device, seed=9, margin=0.5)
    assert torch.autograd.gradcheck(lambda t: ops.roi_align(t, rois, (2, 3), 1.0, -1, aligned),
                                    (x.requires_grad_(),), fast_mode=True)
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.roi_align(t, rois, 2, 1.0, 2, aligned), (x_cl,), fast_mode=True)


def test_cpu_backward_is_deterministic_and_thread_count_independent():
    x, rois = make(n=2, c=8, h=16, w=16, k=64, seed=10)
    weight = torch.randn(64, 8, 7, 7)
    threads = torch.get_num_threads()
    try:
        results = []
        for t in (1, max(threads, 2)):
            torch.set_num_threads(t)
            for cl in (False, True):
                xi = x.to(memory_format=torch.channels_last) if cl else x
                results.append(grads(ops.roi_align, xi, rois, 7, 1.0, 2, weight=weight)[1])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(r, results[0]) for r in results)


def test_boxes_get_no_gradient_and_double_backward_raises():
    x, rois = make(dtype=torch.float64, seed=11)
    x.requires_grad_()
    rois.requires_grad_()
    out = ops.roi_align(x, rois, 2)
    (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    assert rois.grad is None
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


# ---- PyTorch integration ----------------------------------------------------------------------------------------------


def test_opcheck(device):
    x, rois = make(c=2, h=5, w=6, k=5, device=device, seed=12)
    torch.library.opcheck(OP, (x, rois, 1.0, 2, 3, -1, False))
    torch.library.opcheck(OP, (x.to(memory_format=torch.channels_last).requires_grad_(), rois, 0.5, 2, 2, 2, True))
    grad = torch.randn(5, 2, 2, 3, device=device)
    torch.library.opcheck(BACKWARD, (grad, rois, 1.0, 2, 3, 2, 2, 5, 6, -1, False, False))
    torch.library.opcheck(BACKWARD, (grad, rois, 1.0, 2, 3, 2, 2, 5, 6, -1, False, True))
    feats = [x, torch.randn(2, 2, 3, 3, device=device)]
    levels = torch.tensor([0, 1, 1, 0, 1], device=device)
    torch.library.opcheck(MULTI, ([f.clone().requires_grad_() for f in feats], rois, levels, [1.0, 0.5], 2, 2, 2, True))
    torch.library.opcheck(MULTI_BACKWARD, (torch.randn(5, 2, 2, 2, device=device), rois, levels, [1.0, 0.5], [5, 3],
                                           [6, 3], 2, 2, 2, False, False))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, boxes):
        return ops.roi_align(x, boxes, 3, 0.5, 2, True).square().sum()

    x, rois = make(seed=13, scale=0.5)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = f(x1, boxes), ops.roi_align(x2, boxes, 3, 0.5, 2, True).square().sum()
    torch.testing.assert_close(y1, y2)
    y1.backward()
    y2.backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_autocast_runs_in_the_features_dtype(device):
    x, rois = make(c=4, device=device, seed=14)
    xb = x.to(torch.bfloat16)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out = ops.roi_align(xb, rois, 3, 1.0, 2)  # bf16 features, fp32 boxes: no cast, bf16 out
        out32 = ops.roi_align(x, rois, 3, 1.0, 2)
        tv = torchvision.ops.roi_align(xb, rois, 3, 1.0, 2)  # torchvision: fp32 math, input dtype out
    assert out.dtype == tv.dtype == torch.bfloat16 and out32.dtype == torch.float32
    torch.testing.assert_close(out.float(), tv.float(), **tol(torch.bfloat16))
    torch.testing.assert_close(out, ops.roi_align(xb.float(), rois, 3, 1.0, 2).to(torch.bfloat16), rtol=0, atol=0)


# ---- input validation ----------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    x, rois = make(k=4)
    bad = rois.clone()
    bad[1, 0] = 2
    with pytest.raises(RuntimeError, match=r"fastdet::roi_align: rois\[:, 0\] must hold integer batch indices in \[0, 2\)"):
        ops.roi_align(x, bad, 2)
    bad[1, 0] = float("nan")
    with pytest.raises(RuntimeError, match=r"fastdet::roi_align: rois\[:, 0\] must hold integer batch indices"):
        ops.roi_align(x, bad, 2)
    bad[1, 0] = 0.5
    with pytest.raises(RuntimeError, match=r"fastdet::roi_align: rois\[:, 0\] must hold integer batch indices"):
        ops.roi_align(x, bad, 2)
    with pytest.raises(RuntimeError, match=r"fastdet::roi_align: boxes must be a Tensor\[K, 5\]"):
        ops.roi_align(x, rois[:, :4], 2)
    with pytest.raises(RuntimeError, match=r"fastdet::roi_align: rois must have shape \[K, 5\]"):
        OP(x, rois[:, :4], 1.0, 2, 2, -1, False)
    with pytest.raises(RuntimeError, match=r"fastdet::roi_align: input must have shape \[N, C, H, W\]"):
        ops.roi_align(x[0], rois, 2)
    with pytest.raises(RuntimeError, match=r"fastdet::roi_align: output_size must be positive, got \(0, 2\)"):
        ops.roi_align(x, rois, (0, 2))
    with pytest.raises(RuntimeError, match=r"fastdet::roi_align: spatial_scale must be a positive finite number"):
        ops.roi_align(x, rois, 2, 0.0)
    # sampling_ratio^2 samples per bin: a huge grid used to fail allocating (std::bad_alloc) or run for hours
    with pytest.raises(RuntimeError, match=r"fastdet::roi_align: sampling_ratio must be <= 512"):
        ops.roi_align(x, rois, 2, 1.0, 2**31)
    with pytest.raises(RuntimeError, match=r"fastdet::multi_scale_roi_align: sampling_ratio must be <= 512"):
        ops.multi_scale_roi_align([x], rois, torch.zeros(len(rois), dtype=torch.long), [1.0], 2, 513)
    with pytest.raises(RuntimeError, match=r"fastdet::_roi_align_backward: sampling_ratio must be <= 512"):
        torch.ops.fastdet._roi_align_backward(torch.zeros(len(rois), x.shape[1], 2, 2), rois, 1.0, 2, 2, x.shape[0],
                                              x.shape[1], x.shape[2], x.shape[3], 1000, True)
    with pytest.raises(RuntimeError, match=r"fastdet::roi_align: spatial_scale must be a positive finite number"):
        ops.roi_align(x, rois, 2, float("nan"))
    with pytest.raises(RuntimeError, match=r"fastdet::roi_align: input must be a floating-point"):
        ops.roi_align(x.long(), rois, 2)
    with pytest.raises(RuntimeError, match=r"fastdet::roi_align: rois must be a floating-point"):
        ops.roi_align(x, rois.long(), 2)
    with pytest.raises(RuntimeError, match=r"fastdet::roi_align: boxes\[1\] must have shape \[L, 4\]"):
        ops.roi_align(x, [rois[:2, 1:], rois[:2]], 2)
    with pytest.raises(RuntimeError, match=r"fastdet::_roi_align_backward: grad must have shape"):
        BACKWARD(torch.randn(4, 3, 2, 2), rois, 1.0, 3, 3, 2, 3, 7, 9, -1, False, False)
    with pytest.raises(RuntimeError, match=r"fastdet::_roi_align_backward: rois\[:, 0\] must hold integer batch"):
        BACKWARD(torch.randn(4, 3, 2, 2), rois, 1.0, 2, 2, 1, 3, 7, 9, -1, False, False)
    feats = [x, x[:, :, :4, :4]]
    levels = torch.tensor([0, 1, 1, 0])
    with pytest.raises(RuntimeError, match=r"fastdet::multi_scale_roi_align: levels must hold level indices in \[0, 2\)"):
        ops.multi_scale_roi_align(feats, rois, levels + 1, [1.0, 0.5], 2)
    with pytest.raises(RuntimeError, match=r"fastdet::multi_scale_roi_align: levels must be an int64 tensor"):
        ops.multi_scale_roi_align(feats, rois, levels.int(), [1.0, 0.5], 2)
    with pytest.raises(RuntimeError, match=r"fastdet::multi_scale_roi_align: levels must have shape \[K\]"):
        ops.multi_scale_roi_align(feats, rois, levels[:3], [1.0, 0.5], 2)
    with pytest.raises(RuntimeError, match=r"fastdet::multi_scale_roi_align: spatial_scales must hold one scale per level"):
        ops.multi_scale_roi_align(feats, rois, levels, [1.0], 2)
    with pytest.raises(RuntimeError, match=r"fastdet::multi_scale_roi_align: features\[1\] must have shape \[N, C, H, W\] with N, C"):
        ops.multi_scale_roi_align([x, x[:, :2]], rois, levels, [1.0, 0.5], 2)
    with pytest.raises(RuntimeError, match=r"fastdet::multi_scale_roi_align: features\[0\] and features\[1\] must have the same dtype"):
        ops.multi_scale_roi_align([x, x.double()], rois, levels, [1.0, 0.5], 2)
    with pytest.raises(RuntimeError, match=r"fastdet::multi_scale_roi_align: features must hold 1 to 16 levels, got 17"):
        ops.multi_scale_roi_align([x] * 17, rois, levels, [1.0] * 17, 2)


def test_fake_kernels_raise_the_same_errors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, rois = make(k=4)
    with FakeTensorMode() as mode:
        fx, fr = mode.from_tensor(x), mode.from_tensor(rois)
        out = OP(fx.to(memory_format=torch.channels_last), fr, 1.0, 2, 3, -1, False)
        assert out.shape == (4, 3, 2, 3) and out.is_contiguous(memory_format=torch.channels_last)
        with pytest.raises(RuntimeError, match=r"fastdet::roi_align: output_size must be positive"):
            OP(fx, fr, 1.0, 0, 3, -1, False)
        with pytest.raises(RuntimeError, match=r"fastdet::roi_align: sampling_ratio must be <= 512"):
            OP(fx, fr, 1.0, 2, 3, 600, False)
        with pytest.raises(RuntimeError, match=r"fastdet::roi_align: rois must have shape \[K, 5\]"):
            OP(fx, fr[:, :4], 1.0, 2, 3, -1, False)
        with pytest.raises(RuntimeError, match=r"fastdet::multi_scale_roi_align: levels must be an int64 tensor"):
            MULTI([fx], fr, mode.from_tensor(torch.zeros(4, dtype=torch.int32)), [1.0], 2, 2, -1, False)


@pytest.mark.cuda
def test_device_mismatch_raises():
    x, rois = make()
    with pytest.raises(RuntimeError, match=r"fastdet::roi_align: input and rois must be on the same device"):
        ops.roi_align(x, rois.cuda(), 2)


# ---- multi-level --------------------------------------------------------------------------------------------------------


def fpn(n=2, c=4, sizes=((32, 40), (16, 20), (8, 10), (4, 5)), k_per_image=12, dtype=torch.float32, device="cpu",
        seed=0):
    """FPN features for a 128 x 160 image (strides 4..32) and boxes of every size."""
    g = torch.Generator().manual_seed(seed)
    feats = {f"p{i + 2}": torch.randn(n, c, h, w, generator=g).to(device=device, dtype=dtype)
             for i, (h, w) in enumerate(sizes)}
    boxes = []
    for _ in range(n):
        xy = torch.rand(k_per_image, 2, generator=g) * torch.tensor([150.0, 120.0]) - 5
        wh = torch.rand(k_per_image, 2, generator=g) ** 2 * 200 + 1  # small and large boxes
        boxes.append(torch.cat([xy, xy + wh], 1).to(device=device, dtype=dtype))
    return feats, boxes, [(128, 160)] * n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("output_size,sampling_ratio", [(7, 2), ((5, 3), -1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_multi_scale_matches_torchvision(dtype, output_size, sampling_ratio, channels_last, device):
    feats, boxes, shapes = fpn(dtype=dtype, device=device, seed=sampling_ratio + 5)
    if channels_last:
        feats = {k: v.to(memory_format=torch.channels_last) for k, v in feats.items()}
    names = ["p2", "p3", "p4", "p5"]
    # canonical_scale 56 (not 224) so that boxes in a 128 x 160 image reach all 4 levels
    ours = ops.MultiScaleRoIAlign(names, output_size, sampling_ratio, canonical_scale=56)
    theirs = torchvision.ops.MultiScaleRoIAlign(names, output_size, sampling_ratio, canonical_scale=56)
    fa = {k: v.clone().requires_grad_() for k, v in feats.items()}
    fb = {k: v.clone().requires_grad_() for k, v in feats.items()}
    out, tv = ours(fa, boxes, shapes), theirs(fb, boxes, shapes)
    assert ours.scales == theirs.scales == [0.25, 0.125, 0.0625, 0.03125]
    torch.testing.assert_close(out, tv, **tol(dtype))
    weight = torch.randn(out.shape, dtype=dtype, device=device)
    (out * weight).sum().backward()
    (tv * weight).sum().backward()
    for k in names:
        torch.testing.assert_close(fa[k].grad, fb[k].grad, **tol(dtype))
    levels = torchvision.ops.poolers.LevelMapper(2, 5, canonical_scale=56)(boxes)
    assert len(set(levels.tolist())) == 4  # every level is used


def test_multi_scale_single_level_and_filtering():
    feats, boxes, shapes = fpn(seed=1)
    feats["extra"] = torch.randn(2, 4, 3, 3)
    for names in (["p3"], ["p2", "p4"]):
        ours = ops.MultiScaleRoIAlign(names, 3, 2)
        theirs = torchvision.ops.MultiScaleRoIAlign(names, 3, 2)
        torch.testing.assert_close(ours(feats, boxes, shapes), theirs(feats, boxes, shapes))
    assert "featmap_names=['p2', 'p4']" in repr(ours)


def test_multi_scale_op_matches_reference(device):
    feats, boxes, _ = fpn(n=2, c=3, k_per_image=8, dtype=torch.float64, device=device, seed=2)
    flist = list(feats.values())
    rois = torch.cat([torch.cat([torch.full((8, 1), i, dtype=torch.float64, device=device), b], 1)
                      for i, b in enumerate(boxes)])
    levels = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(0)).to(device)
    scales = [0.25, 0.125, 0.0625, 0.03125]
    out = ops.multi_scale_roi_align(flist, rois, levels, scales, (3, 4), -1, True)
    expected = ref.multi_scale_roi_align([f.cpu() for f in flist], rois.cpu(), levels.cpu(), scales, (3, 4), -1, True)
    torch.testing.assert_close(out.cpu(), expected, **tol(torch.float64))
    small = [f[:, :1, :6, :7].clone().requires_grad_() for f in flist]
    rois_small = rois.clone()
    rois_small[:, 1:] /= 8
    assert torch.autograd.gradcheck(
        lambda *fs: ops.multi_scale_roi_align(list(fs), rois_small, levels, scales, 2, 2, True), tuple(small),
        fast_mode=True)


def test_multi_scale_compile_fullgraph():
    torch._dynamo.reset()
    feats, boxes, shapes = fpn(seed=3)
    m = ops.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 7, 2)
    f = torch.compile(lambda x, b: m(x, b, shapes), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(feats, boxes), m(feats, boxes, shapes))


# ---- CUDA ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_matches_cpu(dtype, channels_last):
    x, rois = make(n=3, c=37, h=23, w=29, k=200, dtype=dtype, seed=16, scale=0.5)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(200, 37, 7, 7)
    out, gx = grads(ops.roi_align, x, rois, 7, 0.5, -1, True, weight=weight)
    out_c, gx_c = grads(ops.roi_align, x.cuda(), rois.cuda(), 7, 0.5, -1, True, weight=weight.cuda())
    torch.testing.assert_close(out_c.cpu(), out, **tol(dtype))
    torch.testing.assert_close(gx_c.cpu().float(), gx.float(), **tol(dtype))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("sampling_ratio,aligned", [(-1, False), (2, True), (3, False)])
def test_cuda_deterministic_backward(dtype, channels_last, sampling_ratio, aligned):
    feats, boxes, shapes = fpn(n=3, c=21, sizes=((64, 80), (32, 40), (16, 20), (8, 10)), k_per_image=300,
                               dtype=dtype, device="cuda", seed=17)
    boxes[0][:5] = boxes[0][:1]  # duplicated RoIs
    if channels_last:
        feats = {k: v.to(memory_format=torch.channels_last) for k, v in feats.items()}
    m = ops.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], 7, sampling_ratio, canonical_scale=56)
    weight = torch.randn(900, 21, 7, 7, device="cuda")
    x1 = feats["p3"]

    def run():
        fs = {k: v.detach().clone().requires_grad_() for k, v in feats.items()}
        out = m(fs, boxes, shapes)
        (out.float() * weight).sum().backward()
        single = grads(ops.roi_align, x1, boxes, 7, 0.125, sampling_ratio, aligned, weight=weight)[1]
        return [fs[k].grad for k in fs] + [single]

    atomic = run()
    torch.use_deterministic_algorithms(True)
    try:
        a, b = run(), run()
    finally:
        torch.use_deterministic_algorithms(False)
    for ga, gb, gt in zip(a, b, atomic):
        assert torch.equal(ga, gb)
        assert ga.is_contiguous(memory_format=torch.channels_last) == channels_last
        torch.testing.assert_close(ga.float(), gt.float(), **tol(dtype))


@pytest.mark.cuda
def test_cuda_deterministic_backward_edge_rois():
    x = torch.randn(2, 3, 17, 19, device="cuda", dtype=torch.float64)
    _, rois = make(n=2, h=17, w=19, k=400, seed=18, margin=6.0, device="cuda")
    rois[:5, 1:] = torch.tensor([[-1.0, -1.0, 0.0, 0.0], [17.5, 15.5, 19.0, 17.0], [3.0, 3.0, 3.0, 3.0],
                                 [-0.7, 2.0, 0.3, 2.0], [18.2, 16.2, 18.9, 16.9]], dtype=torch.float64)
    for aligned, sr in ((False, -1), (True, -1), (True, 2), (False, 4)):
        weight = torch.randn(400, 3, 5, 5, device="cuda", dtype=torch.float64)
        atomic = grads(ops.roi_align, x, rois, 5, 1.0, sr, aligned, weight=weight)[1]
        torch.use_deterministic_algorithms(True)
        try:
            det = grads(ops.roi_align, x, rois, 5, 1.0, sr, aligned, weight=weight)[1]
        finally:
            torch.use_deterministic_algorithms(False)
        torch.testing.assert_close(det, atomic, **tol(torch.float64))
        torch.testing.assert_close(det.cpu(), grads(ops.roi_align, x.cpu(), rois.cpu(), 5, 1.0, sr, aligned,
                                                    weight=weight.cpu())[1], **tol(torch.float64))
