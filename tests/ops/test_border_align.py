"""fastdet::border_align against the pure-PyTorch reference and hand-computed cases."""

import pytest
import torch

from conftest import tol
from fastdet import ops
from fastdet.testing import deterministic_algorithms
from fastdet.ops._reference import border_align as ref

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
OP = torch.ops.fastdet.border_align.default
BACKWARD = torch.ops.fastdet._border_align_backward.default


def make(n=2, c=3, h=5, w=6, dtype=torch.float32, device="cpu", seed=0, margin=2.0, max_side=5.0):
    """Features [n, 4c, h, w] and one box per location: corners anywhere in [-margin, size + margin]
    (so some boxes are partly or wholly outside the map), sides in [0, max_side], ~10% zero-size."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4 * c, h, w, generator=g, dtype=torch.float64)
    xy = torch.rand(n, h * w, 2, generator=g, dtype=torch.float64) * torch.tensor([w + 2 * margin, h + 2 * margin]) - margin
    wh = torch.rand(n, h * w, 2, generator=g, dtype=torch.float64) * max_side
    wh[torch.rand(n, h * w, generator=g) < 0.1] = 0
    boxes = torch.cat([xy, xy + wh], -1)
    return x.to(device=device, dtype=dtype), boxes.to(device=device, dtype=dtype)


def grads(fn, x, boxes, pool_size, weight):
    x = x.detach().clone().requires_grad_()
    (fn(x, boxes, pool_size).float() * weight).sum().backward()
    return x.grad


# ---- values and gradients against the reference -------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("pool_size,c", [(1, 1), (4, 3), (10, 19)])
def test_matches_reference(dtype, pool_size, c, device):
    x, boxes = make(c=c, dtype=dtype, device=device, seed=pool_size)
    out, argmax = OP(x, boxes, pool_size)
    ref_out, ref_arg = ref.border_align(x, boxes, pool_size, return_argmax=True)
    assert out.shape == (2, c, 30, 4) and out.dtype == dtype and argmax.dtype == torch.int32
    torch.testing.assert_close(out, ref_out, **tol(dtype))
    assert torch.equal(argmax, ref_arg)
    weight = torch.randn(out.shape, dtype=torch.float32, device=device)
    torch.testing.assert_close(grads(ops.border_align, x, boxes, pool_size, weight),
                               grads(ref.border_align, x, boxes, pool_size, weight), **tol(dtype))


def test_border_directions_and_output_order():
    # Features decreasing along x (top, bottom blocks) and along y (left, right blocks): the
    # maximum sits at x1 / y1, which is the first point of top and left but the last point of
    # bottom (x2 -> x1) and right (y2 -> y1).
    h, w, p = 6, 7, 4
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    x = torch.stack([-xs, -ys, -xs - 100, -ys - 100]).unsqueeze(0)  # C = 1
    boxes = torch.zeros(1, h * w, 4, dtype=torch.float64)
    boxes[0, :] = torch.tensor([1.0, 2.0, 5.0, 4.0])
    out, argmax = OP(x, boxes, p)
    assert argmax[0, 0, 0].tolist() == [0, 0, p, p]
    assert out[0, 0, 0].tolist() == [-1.0, -2.0, -101.0, -102.0]  # top: -x1, left: -y1, bottom: -x1-100, right: -y1-100
    # Gradient lands on the winning points: top and left at (y1, x1), bottom at (y2, x1), right at (y1, x2).
    xg = x.clone().requires_grad_()
    g = torch.zeros(1, 1, h * w, 4, dtype=torch.float64)
    g[0, 0, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    OP(xg, boxes, p)[0].backward(g)
    expected = torch.zeros_like(x)
    expected[0, 0, 2, 1], expected[0, 1, 2, 1], expected[0, 2, 4, 1], expected[0, 3, 2, 5] = 1.0, 2.0, 3.0, 4.0
    assert torch.equal(xg.grad, expected)


def test_ties_keep_the_first_maximum_in_sampling_order():
    # One row of values [0, 5, 1, 5, 2] at y = 0: top samples x = 0..4 (first 5 at point 1, x=1);
    # bottom samples x = 4..0 (first 5 at point 1, x=3).
    row = torch.tensor([0.0, 5.0, 1.0, 5.0, 2.0], dtype=torch.float64)
    x = row.expand(4, 1, 5).reshape(1, 4, 1, 5).clone()
    boxes = torch.tensor([0.0, 0.0, 4.0, 0.0], dtype=torch.float64).expand(1, 5, 4).clone()
    out, argmax = OP(x, boxes, 4)
    assert argmax[0, 0, 0, 0].item() == 1 and argmax[0, 0, 0, 2].item() == 1
    assert out[0, 0, 0, 0].item() == 5.0 and out[0, 0, 0, 2].item() == 5.0
    xg = x.clone().requires_grad_()
    g = torch.zeros(1, 1, 5, 4, dtype=torch.float64)
    g[0, 0, 0, 0], g[0, 0, 0, 2] = 1.0, 1.0
    OP(xg, boxes, 4)[0].backward(g)
    assert xg.grad[0, 0, 0].tolist() == [0, 1, 0, 0, 0]  # top: x = 1
    assert xg.grad[0, 2, 0].tolist() == [0, 0, 0, 1, 0]  # bottom: x = 3
    # A constant map ties everywhere: point 0 wins.
    _, argmax = OP(torch.ones(1, 8, 3, 3), torch.tensor([0.2, 0.3, 1.7, 1.9]).expand(1, 9, 4).contiguous(), 5)
    assert (argmax == 0).all()
    # Ties and zero-size boxes against the reference (integer features on a coarse grid).
    x, boxes = make(c=4, dtype=torch.float64, seed=3)
    x = x.round()
    boxes = (boxes * 2).round() / 2
    out, argmax = OP(x, boxes, 4)
    ref_out, ref_arg = ref.border_align(x, boxes, 4, return_argmax=True)
    torch.testing.assert_close(out, ref_out)
    assert torch.equal(argmax, ref_arg)


def test_points_outside_the_map_sample_zero_and_get_no_gradient(device):
    x = -torch.rand(1, 8, 4, 4, dtype=torch.float64, device=device) - 1  # all features < -1
    boxes = torch.tensor([[-10.0, -10.0, -5.0, -5.0],   # wholly outside: every point samples 0
                          [-3.0, 1.0, 2.0, 2.0],        # partly outside: top/bottom start/end outside
                          [1.0, 1.0, 2.0, 2.0]],        # inside: max of negative samples
                         dtype=torch.float64, device=device)
    boxes = torch.cat([boxes, boxes[2:].expand(13, 4)]).unsqueeze(0)
    xg = x.clone().requires_grad_()
    out, argmax = OP(xg, boxes, 5)
    assert (out[0, :, 0] == 0).all() and (argmax[0, :, 0] == 0).all()
    assert (out[0, :, 1, :3] == 0).all()  # top, left, bottom reach x < -1; right (x = 2) is inside
    assert (out[0, :, 1, 3] < -1).all()
    assert (out[0, :, 2] < -1).all()
    g = torch.zeros_like(out)
    g[0, :, 0] = 1.0  # only the outputs that took an outside point
    g[0, :, 1, :3] = 1.0
    out.backward(g)
    assert torch.equal(xg.grad, torch.zeros_like(x))
    torch.testing.assert_close(out, ref.border_align(x, boxes, 5))


def test_nan_and_inf_box_coordinates_are_outside(device):
    x, boxes = make(dtype=torch.float32, device=device, seed=5)
    x = x - 10  # all samples inside the map are negative, so an outside point (0) wins
    boxes[0, 0] = torch.tensor([float("nan"), 1.0, 2.0, 3.0])
    boxes[0, 1] = torch.tensor([1.0, float("inf"), 2.0, float("inf")])
    boxes[1, 2] = torch.tensor([float("-inf"), float("nan"), float("inf"), float("nan")])
    xg = x.clone().requires_grad_()
    out, argmax = OP(xg, boxes, 3)
    assert torch.isfinite(out).all()
    assert (out[0, :, 0, 0] == 0).all() and (out[0, :, 0, 1] == 0).all()  # top and left start at the NaN x1
    assert (out[1, :, 2] == 0).all()
    assert ((argmax >= 0) & (argmax <= 3)).all()
    out.sum().backward()
    assert torch.isfinite(xg.grad).all()
    torch.testing.assert_close(out, ref.border_align(x, boxes, 3))


def test_nan_features_propagate_first_nan_wins(device):
    x = torch.zeros(1, 4, 1, 5, device=device)
    x[0, 0, 0, 2] = float("nan")
    x[0, 0, 0, 4] = 7.0
    x[0, 2] = x[0, 0]
    boxes = torch.tensor([0.0, 0.0, 4.0, 0.0], device=device).expand(1, 5, 4).contiguous()
    out, argmax = OP(x, boxes, 4)
    # A sample whose 4 corners include the NaN is NaN even at weight 0 (0 * NaN, as RoIAlign):
    # top samples x = 0, 1 (corners 1 and 2: NaN), ...; bottom samples x = 4, 3 (corners 3, 4), 2 (NaN).
    assert torch.isnan(out[0, 0, 0, 0]) and argmax[0, 0, 0, 0].item() == 1
    assert torch.isnan(out[0, 0, 0, 2]) and argmax[0, 0, 0, 2].item() == 2
    ref_out, ref_arg = ref.border_align(x, boxes, 4, return_argmax=True)
    torch.testing.assert_close(out, ref_out, equal_nan=True)
    assert torch.equal(argmax, ref_arg)


def test_huge_coordinates_fp16():
    x = torch.randn(1, 4, 3, 3).half()
    boxes = torch.tensor([60000.0, -60000.0, 65000.0, 1.0]).expand(1, 9, 4).half().contiguous()
    boxes[0, 1] = torch.tensor([-65504.0, 0.0, 65504.0, 2.0])  # x2 - x1 = 131008 overflows fp16, not the fp32 math
    out, argmax = OP(x, boxes, 2)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref.border_align(x.float(), boxes.float(), 2), rtol=0, atol=1e-3)


# ---- dtypes, layouts, empty inputs --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_equals_fp32_of_rounded_inputs(dtype, device):
    x, boxes = make(c=9, dtype=torch.float32, device=device, seed=6)
    xh, bh = x.to(dtype), boxes.to(dtype)
    out, argmax = OP(xh, bh, 6)
    out32, arg32 = OP(xh.float(), bh.float(), 6)
    assert out.dtype == dtype
    # fp32 math on the rounded inputs: the same points and maximum, rounded once.
    assert torch.equal(out, out32.to(dtype)) and torch.equal(argmax, arg32)
    weight = torch.randn(out.shape, device=device)
    torch.testing.assert_close(grads(ops.border_align, xh, bh, 6, weight).float(),
                               grads(ops.border_align, xh.float(), bh.float(), 6, weight), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_inputs(dtype, device):
    x, boxes = make(c=5, dtype=dtype, device=device, seed=7)
    expected, expected_arg = OP(x, boxes, 3)
    x_cl = x.to(memory_format=torch.channels_last)
    x_sliced = torch.stack([x, x], 2).flatten(1, 2)[:, ::2]  # a strided view with the same values
    assert not x_sliced.is_contiguous()
    boxes_nc = boxes.transpose(0, 1).contiguous().transpose(0, 1)
    assert not boxes_nc.is_contiguous()
    for xi, bi in ((x_cl, boxes), (x_sliced, boxes_nc)):
        out, arg = OP(xi, bi, 3)
        assert torch.equal(out, expected) and torch.equal(arg, expected_arg)
    weight = torch.randn(expected.shape, device=device)
    got, want = grads(ops.border_align, x_cl, boxes_nc, 3, weight), grads(ops.border_align, x, boxes, 3, weight)
    if device == "cpu":
        assert torch.equal(got, want)
    else:  # the CUDA backward adds with atomics, in no fixed order
        torch.testing.assert_close(got, want, **tol(dtype))


@pytest.mark.parametrize("shape", [(0, 8, 3, 4), (2, 0, 3, 4), (2, 8, 0, 4), (2, 8, 3, 0)])
def test_empty_inputs(shape, device):
    n, c4, h, w = shape
    x = torch.randn(shape, device=device, requires_grad=True)
    boxes = torch.zeros(n, h * w, 4, device=device)
    out = ops.border_align(x, boxes, 3)
    assert out.shape == (n, c4 // 4, h * w, 4)
    out.sum().backward()
    assert x.grad.shape == shape and (x.grad == 0).all()


def test_module():
    m = ops.BorderAlign(pool_size=4)
    assert "pool_size=4" in repr(m)
    x, boxes = make(seed=8)
    assert torch.equal(m(x, boxes), ops.border_align(x, boxes, 4))


# ---- gradients ------------------------------------------------------------------------------------


def test_gradcheck(device):
    # Tie-free: continuous random features, boxes inside the map with non-integer corners.
    x, boxes = make(n=2, c=2, h=4, w=5, dtype=torch.float64, device=device, seed=9, margin=-0.3, max_side=2.5)
    boxes[..., 2:] = torch.minimum(boxes[..., 2:], torch.tensor([4.6, 3.6], dtype=torch.float64, device=device))
    assert torch.autograd.gradcheck(lambda t: ops.border_align(t, boxes, 3), (x.requires_grad_(),))


def test_backward_is_deterministic_on_cpu():
    x, boxes = make(c=16, h=8, w=8, seed=10, max_side=8.0)
    weight = torch.randn(2, 16, 64, 4)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results += [grads(ops.border_align, x, boxes, 5, weight) for _ in range(2)]
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_boxes_get_no_gradient():
    x, boxes = make(seed=11)
    boxes.requires_grad_()
    x.requires_grad_()
    ops.border_align(x, boxes, 2).sum().backward()
    assert boxes.grad is None and x.grad is not None


def test_double_backward_raises():
    x, boxes = make(dtype=torch.float64, seed=12)
    x.requires_grad_()
    (g,) = torch.autograd.grad(ops.border_align(x, boxes, 2).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


# ---- PyTorch integration ----------------------------------------------------------------------------


def test_opcheck(device):
    x, boxes = make(c=2, h=3, w=4, device=device, seed=13)
    torch.library.opcheck(OP, (x, boxes, 3))
    torch.library.opcheck(OP, (x.clone().requires_grad_(), boxes, 3))
    _, argmax = OP(x, boxes, 3)
    grad = torch.randn(2, 2, 12, 4, device=device)
    torch.library.opcheck(BACKWARD, (grad, boxes, argmax, 3, 3, 4))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, boxes):
        return ops.border_align(x, boxes, 4).square().sum()

    x, boxes = make(seed=14)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1 = f(x1, boxes)
    y2 = ops.border_align(x2, boxes, 4).square().sum()
    torch.testing.assert_close(y1, y2)
    y1.backward()
    y2.backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_autocast_runs_in_fp32(device):
    x, boxes = make(device=device, seed=15)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out = ops.border_align(x.to(torch.bfloat16), boxes, 3)  # mixed dtypes are unified to fp32
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ops.border_align(x.to(torch.bfloat16).float(), boxes, 3))


# ---- input validation ---------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    x, boxes = make(c=2, h=3, w=4)
    with pytest.raises(RuntimeError, match=r"fastdet::border_align: input's channel count must be divisible by 4"):
        ops.border_align(x[:, :7], boxes, 3)
    with pytest.raises(RuntimeError, match=r"fastdet::border_align: input must have shape \[N, 4C, H, W\]"):
        ops.border_align(x[0], boxes, 3)
    with pytest.raises(RuntimeError, match=r"fastdet::border_align: boxes must have shape \[N, H\*W, 4\] = \[2, 12, 4\]"):
        ops.border_align(x, boxes[:, :11], 3)
    with pytest.raises(RuntimeError, match=r"fastdet::border_align: boxes must have shape"):
        ops.border_align(x, boxes[..., :3], 3)
    with pytest.raises(RuntimeError, match=r"fastdet::border_align: boxes must have shape"):
        ops.border_align(x, boxes[:1], 3)
    with pytest.raises(RuntimeError, match=r"fastdet::border_align: pool_size must be >= 1"):
        ops.border_align(x, boxes, 0)
    with pytest.raises(RuntimeError, match=r"fastdet::border_align: input and boxes must have the same dtype"):
        ops.border_align(x, boxes.double(), 3)
    with pytest.raises(RuntimeError, match=r"fastdet::border_align: input must be a floating-point"):
        ops.border_align(x.long(), boxes.long(), 3)
    out, argmax = OP(x, boxes, 3)
    with pytest.raises(RuntimeError, match=r"fastdet::_border_align_backward: argmax must be an int32"):
        BACKWARD(out, boxes, argmax.long(), 3, 3, 4)
    with pytest.raises(RuntimeError, match=r"fastdet::_border_align_backward: grad must have shape"):
        BACKWARD(out, boxes, argmax, 3, 4, 4)


def test_fake_kernel_raises_the_same_errors():
    x, boxes = make(c=2, h=3, w=4)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fx, fb = mode.from_tensor(x), mode.from_tensor(boxes)
        out, argmax = OP(fx, fb, 3)
        assert out.shape == (2, 2, 12, 4) and argmax.dtype == torch.int32
        with pytest.raises(RuntimeError, match=r"fastdet::border_align: input's channel count must be divisible by 4"):
            OP(fx[:, :7], fb, 3)
        with pytest.raises(RuntimeError, match=r"fastdet::border_align: pool_size must be >= 1"):
            OP(fx, fb, 0)


@pytest.mark.cuda
def test_device_mismatch_raises():
    x, boxes = make()
    with pytest.raises(RuntimeError, match=r"fastdet::border_align: input and boxes must be on the same device"):
        ops.border_align(x, boxes.cuda(), 3)


# ---- CUDA against CPU -------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_cpu(dtype):
    x, boxes = make(n=3, c=33, h=17, w=23, dtype=dtype, seed=16, max_side=12.0)
    out, argmax = OP(x, boxes, 7)
    out_cuda, argmax_cuda = OP(x.cuda(), boxes.cuda(), 7)
    torch.testing.assert_close(out_cuda.cpu(), out, **tol(dtype))
    assert (argmax_cuda.cpu() == argmax).float().mean() > 0.999  # fp rounding may flip near-ties
    weight = torch.randn(out.shape)
    g_cpu = grads(ops.border_align, x, boxes, 7, weight)
    g_cuda = grads(ops.border_align, x.cuda(), boxes.cuda(), 7, weight.cuda())
    if dtype in (torch.float32, torch.float64):
        assert torch.equal(argmax_cuda.cpu(), argmax)
        torch.testing.assert_close(g_cuda.cpu(), g_cpu, **tol(dtype))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_cuda_deterministic_backward_is_bitwise_repeatable_and_matches_cpu(dtype):
    # Long boxes on a small map: many arg-max points share each gradient element.
    x, boxes = make(n=2, c=20, h=9, w=11, dtype=dtype, seed=17, max_side=10.0)
    out, _ = OP(x, boxes, 6)
    weight = torch.randn(out.shape)
    with deterministic_algorithms():
        runs = [grads(ops.border_align, x.cuda(), boxes.cuda(), 6, weight.cuda()) for _ in range(3)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    atomic = grads(ops.border_align, x.cuda(), boxes.cuda(), 6, weight.cuda())
    torch.testing.assert_close(runs[0], atomic, **tol(dtype))
    if dtype != torch.bfloat16:  # the arg-max can flip on near-ties between devices in bf16
        torch.testing.assert_close(runs[0].cpu(), grads(ops.border_align, x, boxes, 6, weight), **tol(dtype))
