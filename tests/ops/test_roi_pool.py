"""fastdet::roi_pool against torchvision.ops.roi_pool, the pure-PyTorch reference and hand-computed cases."""

import pytest
import torch

from conftest import tol
from fastdet import ops
from fastdet.ops._reference import roi_pool as ref

tv_ops = pytest.importorskip("torchvision.ops")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
OP = torch.ops.fastdet.roi_pool.default
BACKWARD = torch.ops.fastdet._roi_pool_backward.default


def make(n=2, c=3, h=9, w=11, k=12, scale=0.5, dtype=torch.float32, device="cpu", seed=0, margin=4.0):
    """Tie-free features [n, c, h, w] (a random permutation, so every maximum is unique) and k
    RoIs in input-image coordinates (map / scale), corners up to `margin` map cells outside the
    map, some small or zero-size."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randperm(n * c * h * w, generator=g).to(torch.float64).reshape(n, c, h, w) / (n * c * h * w)
    size = torch.tensor([w, h], dtype=torch.float64) / scale
    xy = torch.rand(k, 2, generator=g, dtype=torch.float64) * (size + 2 * margin / scale) - margin / scale
    wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * size * 0.7
    wh[torch.rand(k, generator=g) < 0.15] = 0
    idx = torch.randint(0, n, (k, 1), generator=g).to(torch.float64)
    rois = torch.cat([idx, xy, xy + wh], 1)
    return x.to(device=device, dtype=dtype), rois.to(device=device, dtype=dtype)


def grads(fn, x, rois, output_size, scale, weight):
    x = x.detach().clone().requires_grad_()
    (fn(x, rois, output_size, scale).float() * weight).sum().backward()
    return x.grad


# ---- against torchvision and the reference -------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("output_size,scale", [((7, 7), 0.5), ((2, 3), 1.0), ((5, 4), 0.25), ((1, 1), 0.125)])
def test_matches_torchvision(dtype, output_size, scale, device):
    # C = 35: the CPU kernel's register blocks of 16 (8 for fp64) channels and a remainder.
    x, rois = make(c=35, scale=scale, dtype=dtype, device=device, seed=output_size[0] * 10 + output_size[1])
    out = ops.roi_pool(x, rois, output_size, scale)
    want = tv_ops.roi_pool(x, rois, output_size, scale)
    assert out.shape == want.shape and out.dtype == dtype and out.is_contiguous()
    assert torch.equal(out, want)  # maxima are exact
    weight = torch.randn(out.shape, device=device)
    torch.testing.assert_close(grads(ops.roi_pool, x, rois, output_size, scale, weight),
                               grads(tv_ops.roi_pool, x, rois, output_size, scale, weight), **tol(dtype))


@pytest.mark.parametrize("output_size", [(7, 7), (3, 5)])
def test_matches_reference_with_argmax(output_size, device):
    x, rois = make(c=19, dtype=torch.float64, device=device, seed=1)
    out, argmax = OP(x, rois, 0.5, *output_size)
    ref_out, ref_arg = ref.roi_pool(x, rois, output_size, 0.5, return_argmax=True)
    assert argmax.dtype == torch.int32
    assert torch.equal(out, ref_out) and torch.equal(argmax, ref_arg)
    weight = torch.randn(out.shape, dtype=torch.float64, device=device)
    torch.testing.assert_close(grads(ops.roi_pool, x, rois, output_size, 0.5, weight),
                               grads(ref.roi_pool, x, rois, output_size, 0.5, weight))


def test_bins_by_hand():
    # A 4 x 6 map of distinct values; RoI (x1, y1, x2, y2) = (1, 0, 4, 2) -> columns 1..4 (4 wide),
    # rows 0..2 (3 high); output 2 x 2: bin_w = 2, bin_h = 1.5 -> rows [0, 2) and [1, 3), columns
    # [1, 3) and [3, 5).
    x = torch.arange(24, dtype=torch.float32).reshape(1, 1, 4, 6)
    rois = torch.tensor([[0.0, 1.0, 0.0, 4.0, 2.0]])
    out, argmax = OP(x, rois, 1.0, 2, 2)
    assert out[0, 0].tolist() == [[8.0, 10.0], [14.0, 16.0]]
    assert argmax[0, 0].tolist() == [[8, 10], [14, 16]]
    # round half away from zero: 0.5 * 3 = 1.5 -> 2, 0.5 * 5 = 2.5 -> 3; a 1 x 1 output is the max of the box.
    out, _ = OP(x, torch.tensor([[0.0, 3.0, 3.0, 5.0, 5.0]]), 0.5, 1, 1)
    assert out.item() == 3 * 6 + 3  # rows 2..3, columns 2..3: max at (3, 3)


def test_ties_take_the_first_maximum_in_row_major_order():
    x = torch.zeros(1, 2, 3, 4)
    x[0, 0, 1, 2] = x[0, 0, 2, 0] = 5.0  # channel 0: two maxima; channel 1: all zero
    rois = torch.tensor([[0.0, 0.0, 0.0, 3.0, 2.0]])
    xg = x.clone().requires_grad_()
    out, argmax = OP(xg, rois, 1.0, 1, 1)
    assert argmax.flatten().tolist() == [1 * 4 + 2, 0]
    out.sum().backward()
    assert xg.grad[0, 0, 1, 2] == 1 and xg.grad[0, 0, 2, 0] == 0 and xg.grad[0, 1, 0, 0] == 1
    assert xg.grad.sum() == 2


def test_overlapping_bins_and_rois_accumulate_gradients(device):
    # Bins share a row when bin_h is not an integer, and two RoIs share the whole map: the single
    # maximum receives every gradient.
    x = torch.zeros(1, 1, 3, 3, dtype=torch.float64, device=device)
    x[0, 0, 1, 1] = 1.0
    rois = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0]] * 2, dtype=torch.float64, device=device)
    xg = x.clone().requires_grad_()
    out = ops.roi_pool(xg, rois, 2, 1.0)  # bin size 1.5: rows/columns [0, 2) and [1, 3)
    assert (out == 1).all()
    out.backward(torch.arange(8, dtype=torch.float64, device=device).reshape(2, 1, 2, 2))
    assert xg.grad[0, 0, 1, 1].item() == 28.0 and xg.grad.sum().item() == 28.0


# ---- RoIs outside the map, degenerate and adversarial coordinates ---------------------------------


def test_rois_outside_and_degenerate(device):
    x, _ = make(n=1, c=2, h=5, w=6, dtype=torch.float64, device=device, seed=2)
    x = x - 2  # all negative: an empty bin (0) is distinguishable from any feature
    rois = torch.tensor([[0.0, -30.0, -30.0, -10.0, -10.0],  # wholly outside: every bin empty
                         [0.0, 50.0, 1.0, 60.0, 4.0],        # wholly outside on the right
                         [0.0, -3.0, -2.0, 2.0, 2.0],        # partly outside: only its inside part
                         [0.0, 2.0, 2.0, 2.0, 2.0],          # zero size: a 1 x 1 cell
                         [0.0, 4.0, 3.0, 1.0, 1.0]],         # inverted: forced to 1 x 1 at (x1, y1)
                        dtype=torch.float64, device=device)
    out, argmax = OP(x, rois, 1.0, 3, 3)
    assert (out[:2] == 0).all() and (argmax[:2] == -1).all()
    assert (out[3] == x[0, :, 2, 2, None, None]).all() and (argmax[3] == 2 * 6 + 2).all()
    assert (out[4] == x[0, :, 3, 4, None, None]).all()
    assert torch.equal(out, tv_ops.roi_pool(x.cpu(), rois.cpu(), 3, 1.0).to(device))
    ref_out, ref_arg = ref.roi_pool(x, rois, 3, 1.0, return_argmax=True)
    assert torch.equal(out, ref_out) and torch.equal(argmax, ref_arg)
    xg = x.clone().requires_grad_()
    OP(xg, rois, 1.0, 3, 3)[0][:2].sum().backward()
    assert (xg.grad == 0).all()  # empty bins send no gradient


def test_nan_and_inf_coordinates(device):
    x, rois = make(n=2, c=3, k=6, dtype=torch.float32, device=device, seed=3)
    rois[0, 1] = float("nan")
    rois[1, 4] = float("nan")
    rois[2, 1:] = torch.tensor([float("-inf"), float("-inf"), float("inf"), float("inf")])  # the whole map
    rois[3, 1:] = torch.tensor([1e30, 2.0, 3e30, 5.0])  # far right: clamped, wholly outside
    xg = x.clone().requires_grad_()
    out, argmax = OP(xg, rois, 0.5, 2, 2)
    assert (out[:2] == 0).all() and (argmax[:2] == -1).all()
    b = int(rois[2, 0])
    assert torch.equal(out[2].amax((1, 2)), x[b].amax((1, 2)))  # some bin holds the global maximum
    assert (out[3] == 0).all()
    ref_out, ref_arg = ref.roi_pool(x, rois, 2, 0.5, return_argmax=True)
    assert torch.equal(out, ref_out) and torch.equal(argmax, ref_arg)
    out.sum().backward()
    assert torch.isfinite(xg.grad).all()
    ok = slice(4, None)  # the well-formed rows agree with torchvision
    assert torch.equal(out[ok], tv_ops.roi_pool(x, rois[ok], 2, 0.5))


def test_nan_and_inf_features(device):
    x = torch.zeros(1, 3, 2, 3, device=device)
    x[0, 0, 0, 1], x[0, 0, 1, 2] = float("nan"), 5.0  # NaN wins over the larger number
    x[0, 1] = float("-inf")                          # all -inf: -inf (torchvision: -FLT_MAX)
    x[0, 2, 1, 0], x[0, 2, 0, 2] = float("inf"), float("nan")
    rois = torch.tensor([[0.0, 0.0, 0.0, 2.0, 1.0]], device=device)
    out, argmax = OP(x, rois, 1.0, 1, 1)
    assert torch.isnan(out[0, 0]).all() and argmax[0, 0].item() == 1
    assert out[0, 1].item() == float("-inf") and argmax[0, 1].item() == 0
    assert torch.isnan(out[0, 2]).all() and argmax[0, 2].item() == 2
    ref_out, ref_arg = ref.roi_pool(x, rois, 1, 1.0, return_argmax=True)
    torch.testing.assert_close(out, ref_out, equal_nan=True)
    assert torch.equal(argmax, ref_arg)


# ---- dtypes, layouts, list-of-boxes, empty ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision(dtype, device):
    x, rois = make(c=5, dtype=torch.float32, device=device, seed=4)
    xh, rh = x.to(dtype), rois.to(dtype)
    out, argmax = OP(xh, rh, 0.5, 7, 7)
    out32, arg32 = OP(xh.float(), rh.float(), 0.5, 7, 7)  # fp32 math on the rounded inputs
    assert out.dtype == dtype
    assert torch.equal(out, out32.to(dtype)) and torch.equal(argmax, arg32)
    weight = torch.randn(out.shape, device=device)
    # Rounded features may tie: compare against the fp32 run on the same rounded inputs.
    torch.testing.assert_close(grads(ops.roi_pool, xh, rh, 7, 0.5, weight).float(),
                               grads(ops.roi_pool, xh.float(), rh.float(), 7, 0.5, weight), **tol(dtype))


def test_fp16_matches_torchvision_where_its_half_math_is_exact():
    # torchvision's fp16 kernel rounds the scaled coordinates and bin sizes to fp16; with integer
    # boxes, scale 1/2 and power-of-two output sizes every one of those values is exact in fp16,
    # so its bins are ours (torchvision has no bf16 kernel).
    x, rois = make(c=4, h=12, w=14, k=20, scale=0.5, dtype=torch.float16, seed=18)
    rois[:, 1:] = rois[:, 1:].round()
    for output_size in [(2, 4), (4, 4), (1, 2)]:
        assert torch.equal(ops.roi_pool(x, rois, output_size, 0.5), tv_ops.roi_pool(x, rois, output_size, 0.5))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_channels_last_and_strided_inputs(dtype, device):
    x, rois = make(c=20, dtype=dtype, device=device, seed=5)
    expected, expected_arg = OP(x, rois, 0.5, 4, 3)
    x_cl = x.to(memory_format=torch.channels_last)
    x_sliced = torch.stack([x, x], 2).flatten(1, 2)[:, ::2]
    rois_nc = torch.stack([rois, rois], 1)[:, 0]
    assert not x_sliced.is_contiguous() and not rois_nc.is_contiguous()
    for xi, ri in ((x_cl, rois), (x_sliced, rois_nc)):
        out, arg = OP(xi, ri, 0.5, 4, 3)
        assert out.is_contiguous() and torch.equal(out, expected) and torch.equal(arg, expected_arg)
    weight = torch.randn(expected.shape, device=device)
    want = grads(ops.roi_pool, x, rois, (4, 3), 0.5, weight)
    got = grads(ops.roi_pool, x_cl, rois, (4, 3), 0.5, weight)
    assert got.is_contiguous(memory_format=torch.channels_last)  # the input's layout
    if device == "cpu":
        assert torch.equal(got, want)
    else:  # the CUDA backward adds with atomics, in no fixed order
        torch.testing.assert_close(got, want, **tol(dtype))


def test_list_of_boxes_matches_tensor_rois(device):
    x, rois = make(n=3, k=10, device=device, seed=6)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(3)]
    stacked = torch.cat([torch.cat([torch.full((len(b), 1), float(i), device=device), b], 1) for i, b in enumerate(boxes)])
    out = ops.roi_pool(x, boxes, 3, 0.5)
    assert torch.equal(out, ops.roi_pool(x, stacked, 3, 0.5))
    assert torch.equal(out, tv_ops.roi_pool(x, boxes, 3, 0.5))


@pytest.mark.parametrize("shape,k", [((2, 3, 5, 5), 0), ((2, 0, 5, 5), 4), ((2, 3, 0, 5), 4), ((2, 3, 5, 0), 3)])
def test_empty_inputs(shape, k, device):
    x = torch.randn(shape, device=device, requires_grad=True)
    rois = torch.zeros(k, 5, device=device)
    out, argmax = OP(x, rois, 1.0, 2, 3)
    assert out.shape == (k, shape[1], 2, 3) and argmax.shape == out.shape
    if out.numel():
        assert (out == 0).all() and (argmax == -1).all()  # empty map: every bin is empty
    out.sum().backward()
    assert x.grad.shape == shape and (x.grad == 0).all()


def test_module():
    m = ops.RoIPool((3, 2), 0.5)
    assert repr(m) == "RoIPool(output_size=(3, 2), spatial_scale=0.5)"
    assert repr(m) == repr(tv_ops.RoIPool((3, 2), 0.5))
    x, rois = make(seed=7)
    assert torch.equal(m(x, rois), tv_ops.RoIPool((3, 2), 0.5)(x, rois))


# ---- gradients ------------------------------------------------------------------------------------------


def test_gradcheck(device):
    x, rois = make(n=2, c=2, h=5, w=6, k=6, dtype=torch.float64, device=device, seed=8)
    x.requires_grad_()
    fn = lambda t: ops.roi_pool(t, rois, (3, 2), 0.5)  # noqa: E731
    # CUDA atomics may reorder sums of 3+ terms: allow last-bit differences between runs there.
    assert torch.autograd.gradcheck(fn, (x,), nondet_tol=1e-12 if device == "cuda" else 0.0)
    if device == "cuda":  # the deterministic gather backward is exact too
        torch.use_deterministic_algorithms(True)
        try:
            assert torch.autograd.gradcheck(fn, (x,))
        finally:
            torch.use_deterministic_algorithms(False)


def test_backward_is_deterministic_on_cpu():
    x, rois = make(c=40, h=12, w=12, k=64, seed=9)
    weight = torch.randn(64, 40, 7, 7)
    g1 = grads(ops.roi_pool, x, rois, 7, 0.5, weight)
    g2 = grads(ops.roi_pool, x, rois, 7, 0.5, weight)
    assert torch.equal(g1, g2)


def test_boxes_get_no_gradient():
    x, rois = make(seed=10)
    rois.requires_grad_()
    x.requires_grad_()
    ops.roi_pool(x, rois, 2, 0.5).sum().backward()
    assert rois.grad is None and x.grad is not None


def test_double_backward_raises():
    x, rois = make(dtype=torch.float64, seed=11)
    x.requires_grad_()
    (g,) = torch.autograd.grad(ops.roi_pool(x, rois, 2, 0.5).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


# ---- PyTorch integration ------------------------------------------------------------------------------------


def test_opcheck(device):
    x, rois = make(c=2, h=4, w=5, k=5, device=device, seed=12)
    torch.library.opcheck(OP, (x, rois, 0.5, 2, 3))
    torch.library.opcheck(OP, (x.clone().requires_grad_(), rois, 0.5, 2, 3))
    torch.library.opcheck(OP, (x.to(memory_format=torch.channels_last).requires_grad_(), rois, 0.5, 2, 3))
    _, argmax = OP(x, rois, 0.5, 2, 3)
    grad = torch.randn(5, 2, 2, 3, device=device)
    for cl in (False, True):
        torch.library.opcheck(BACKWARD, (grad, rois, argmax, 0.5, 2, 3, 2, 2, 4, 5, cl))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, rois):
        return ops.roi_pool(x, rois, 3, 0.5).square().sum()

    x, rois = make(seed=13)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1 = f(x1, rois)
    y2 = ops.roi_pool(x2, rois, 3, 0.5).square().sum()
    torch.testing.assert_close(y1, y2)
    y1.backward()
    y2.backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_autocast_runs_in_fp32(device):
    x, rois = make(device=device, seed=14)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out = ops.roi_pool(x.to(torch.bfloat16), rois, 3, 0.5)  # bf16 features, fp32 boxes
    assert out.dtype == torch.float32
    assert torch.equal(out, ops.roi_pool(x.to(torch.bfloat16).float(), rois, 3, 0.5))


# ---- input validation -----------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    x, rois = make()
    cases = [
        ((x[0], rois, 2, 0.5), r"input must have shape \[N, C, H, W\]"),
        ((x, rois[:, :4], 2, 0.5), r"boxes must be a Tensor\[K, 5\]"),
        ((x, rois.double(), 2, 0.5), r"input and rois must have the same dtype"),
        ((x.long(), rois.long(), 2, 0.5), r"input must be a floating-point"),
        ((x, rois, 0, 0.5), r"output_size must be positive"),
        ((x, rois, (2, -1), 0.5), r"output_size must be positive"),
        ((x, rois, 2, 0.0), r"spatial_scale must be a positive finite number"),
        ((x, rois, 2, float("inf")), r"spatial_scale must be a positive finite number"),
        ((x, [rois[:, 1:], rois[:, :3]], 2, 0.5), r"boxes\[1\] must have shape \[L, 4\]"),
    ]
    for args, msg in cases:
        with pytest.raises(RuntimeError, match="fastdet::roi_pool: " + msg):
            ops.roi_pool(*args)
    for bad in (2.0, -1.0, 0.5, float("nan")):
        r = rois.clone()
        r[3, 0] = bad
        with pytest.raises(RuntimeError, match=r"fastdet::roi_pool: rois\[:, 0\] must hold integer batch indices in \[0, 2\)"):
            ops.roi_pool(x, r, 2, 0.5)
    with pytest.raises(RuntimeError, match=r"fastdet::roi_pool: rois must have shape \[K, 5\]"):
        OP(x, rois[:, :4], 0.5, 2, 2)
    out, argmax = OP(x, rois, 0.5, 2, 2)
    with pytest.raises(RuntimeError, match=r"fastdet::_roi_pool_backward: argmax must be an int32"):
        BACKWARD(out, rois, argmax.long(), 0.5, 2, 2, 2, 3, 9, 11, False)
    with pytest.raises(RuntimeError, match=r"fastdet::_roi_pool_backward: grad must have shape"):
        BACKWARD(out, rois, argmax, 0.5, 2, 2, 2, 4, 9, 11, False)


def test_backward_ignores_foreign_argmax_values():
    # A hand-made argmax outside [0, H*W) must not write out of bounds.
    x, rois = make(seed=15)
    out, argmax = OP(x, rois, 0.5, 2, 2)
    argmax = argmax.clone()
    argmax[0, 0, 0, 0], argmax[1, 0, 0, 0] = 10**6, -7
    gi = BACKWARD(torch.ones_like(out), rois, argmax, 0.5, 2, 2, 2, 3, 9, 11, False)
    assert torch.isfinite(gi).all() and gi.sum().item() == (argmax >= 0).logical_and(argmax < 99).sum().item()


def test_fake_kernel_raises_the_same_errors():
    x, rois = make()
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fx, fr = mode.from_tensor(x), mode.from_tensor(rois)
        out, argmax = OP(fx, fr, 0.5, 3, 2)
        assert out.shape == (12, 3, 3, 2) and argmax.dtype == torch.int32
        with pytest.raises(RuntimeError, match=r"fastdet::roi_pool: output_size must be positive"):
            OP(fx, fr, 0.5, 0, 2)
        with pytest.raises(RuntimeError, match=r"fastdet::roi_pool: rois must have shape \[K, 5\]"):
            OP(fx, fr[:, :4], 0.5, 2, 2)


@pytest.mark.cuda
def test_device_mismatch_raises():
    x, rois = make()
    with pytest.raises(RuntimeError, match=r"fastdet::roi_pool: input and rois must be on the same device"):
        OP(x, rois.cuda(), 0.5, 2, 2)


# ---- CUDA against CPU, deterministic mode -----------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cuda_matches_cpu(dtype, channels_last):
    x, rois = make(n=3, c=37, h=23, w=31, k=200, dtype=dtype, seed=16)
    xc = x.cuda().to(memory_format=torch.channels_last) if channels_last else x.cuda()
    out, argmax = OP(x, rois, 0.5, 7, 7)
    out_cuda, argmax_cuda = OP(xc, rois.cuda(), 0.5, 7, 7)
    assert torch.equal(out_cuda.cpu(), out) and torch.equal(argmax_cuda.cpu(), argmax)
    weight = torch.randn(out.shape)
    g_cpu = grads(ops.roi_pool, x, rois, 7, 0.5, weight)
    g_cuda = grads(ops.roi_pool, xc, rois.cuda(), 7, 0.5, weight.cuda())
    torch.testing.assert_close(g_cuda.cpu(), g_cpu, **tol(dtype))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cuda_deterministic_backward_is_bitwise_repeatable(dtype, channels_last):
    # Many overlapping RoIs on a small map: many gradients land on the same elements.
    x, rois = make(n=2, c=70, h=16, w=20, k=400, dtype=dtype, device="cuda", seed=17)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(400, 70, 7, 7, device="cuda")
    torch.use_deterministic_algorithms(True)
    try:
        runs = [grads(ops.roi_pool, x, rois, 7, 0.5, weight) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    atomic = grads(ops.roi_pool, x, rois, 7, 0.5, weight)
    torch.testing.assert_close(runs[0], atomic, **tol(dtype))
    # Same summation order as the CPU kernel (RoI index order): equal to the CPU result in fp32.
    g_cpu = grads(ops.roi_pool, x.cpu(), rois.cpu(), 7, 0.5, weight.cpu())
    torch.testing.assert_close(runs[0].cpu(), g_cpu, **tol(dtype))
