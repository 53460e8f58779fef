"""fastdet.ops.corner_pool / corner_pool_sum against the flip + cummax + flip reference."""

import pytest
import torch

from fastdet import ops
from fastdet.ops._reference import corner_pool as ref

from conftest import tol

MODES = ["top", "bottom", "left", "right"]
CORNERS = ["top_left", "bottom_right", "top_right", "bottom_left"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def tied(shape, dtype=torch.float32, device="cpu", seed=0, levels=4):
    """Integer-valued inputs with many repeats: every scan meets ties."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, shape, generator=g).to(dtype=dtype, device=device)


def grads(y, inputs, g):
    return torch.autograd.grad(y, inputs, g)


# ---- values and gradients against the reference ----------------------------------------------------


def test_semantics_small_example():
    x = torch.tensor([[1.0, 3.0, 2.0], [0.0, 5.0, 4.0]]).view(1, 1, 2, 3)
    assert ops.corner_pool(x, "left").view(2, 3).tolist() == [[3, 3, 2], [5, 5, 4]]
    assert ops.corner_pool(x, "right").view(2, 3).tolist() == [[1, 3, 3], [0, 5, 5]]
    assert ops.corner_pool(x, "top").view(2, 3).tolist() == [[1, 5, 4], [0, 5, 4]]
    assert ops.corner_pool(x, "bottom").view(2, 3).tolist() == [[1, 3, 2], [1, 5, 4]]
    assert ops.CornerPool("left")(x).view(2, 3).tolist() == [[3, 3, 2], [5, 5, 4]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference_with_ties_bit_exact(mode, dtype, device):
    # Integer values and gradients: every sum is exact, so values AND gradients must be bit-exact,
    # which pins the tie rule (the argmax nearest the output, as torch.cummax).
    x = tied((2, 3, 37, 45), dtype, device, seed=1).requires_grad_()
    g = tied((2, 3, 37, 45), dtype, device, seed=2, levels=7) - 3
    y, yr = ops.corner_pool(x, mode), ref.corner_pool(x, mode)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y, yr, rtol=0, atol=0)
    torch.testing.assert_close(grads(y, x, g)[0], grads(yr, x, g)[0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("corner", CORNERS)
def test_sum_matches_reference_with_ties(corner, dtype, device):
    a = tied((2, 4, 33, 29), dtype, device, seed=3).requires_grad_()
    b = tied((2, 4, 33, 29), dtype, device, seed=4).requires_grad_()
    g = tied((2, 4, 33, 29), dtype, device, seed=5, levels=7) - 3
    y, yr = ops.corner_pool_sum(a, b, corner), ref.corner_pool_sum(a, b, corner)
    torch.testing.assert_close(y, yr, rtol=0, atol=0)
    for got, want in zip(grads(y, (a, b), g), grads(yr, (a, b), g)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_random_values_bit_exact_and_grads_close(mode, dtype, device):
    # Continuous values: pooling only moves values, so the forward is bit-exact in every dtype
    # (half included); gradients are sums accumulated in fp32 and rounded once, so they are compared
    # with the reference run in fp32 on the same values (torch's own half cummax backward adds in
    # half, in an order that differs between CPU and CUDA).
    g0 = torch.Generator().manual_seed(6)
    x = torch.randn(3, 2, 19, 70, generator=g0).to(dtype=dtype, device=device).requires_grad_()
    g = torch.randn(3, 2, 19, 70, generator=g0).to(dtype=dtype, device=device)
    y, yr = ops.corner_pool(x, mode), ref.corner_pool(x, mode)
    assert torch.equal(y, yr)
    x32 = x.detach().double().requires_grad_()
    want = grads(ref.corner_pool(x32, mode), x32, g.double())[0].to(dtype)
    torch.testing.assert_close(grads(y, x, g)[0], want, **tol(dtype))


def test_sum_rounds_once_like_half_addition():
    g0 = torch.Generator().manual_seed(7)
    a, b = (torch.randn(1, 2, 9, 11, generator=g0).half() for _ in range(2))
    assert torch.equal(ops.corner_pool_sum(a, b), ref.corner_pool(a, "top") + ref.corner_pool(b, "left"))


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode, device):
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, device=device)
    x = (x + torch.arange(x.numel(), dtype=torch.float64, device=device).view_as(x) * 1e-3).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.corner_pool(t, mode), (x,))


@pytest.mark.parametrize("corner", ["top_left", "bottom_right"])
def test_gradcheck_sum(corner, device):
    g0 = torch.Generator().manual_seed(8)
    a = torch.randn(2, 2, 5, 6, dtype=torch.float64, generator=g0).to(device).requires_grad_()  # continuous: no ties
    b = torch.randn(2, 2, 5, 6, dtype=torch.float64, generator=g0).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda u, v: ops.corner_pool_sum(u, v, corner), (a, b))


def test_sum_grad_for_one_input_only():
    a = torch.randn(1, 2, 4, 5, requires_grad=True)
    b = torch.randn(1, 2, 4, 5)
    ops.corner_pool_sum(a, b).sum().backward()
    torch.testing.assert_close(a.grad, grads(ref.corner_pool(a, "top").sum(), a, None)[0])


def test_double_backward_raises():
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(ops.corner_pool(x, "top").sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


# ---- special values, layouts, shapes ---------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_nan_inf_and_signed_zero_follow_cummax(mode, device):
    x = tied((1, 2, 11, 13), torch.float32, device, seed=9) - 1.5
    x[0, 0, 3, 4] = float("nan")
    x[0, 0, 7, 1] = float("nan")
    x[0, 1, 5, 5] = float("inf")
    x[0, 1, 2, 9] = float("-inf")
    x[0, 1, 8, :] = -0.0
    x[0, 1, :, 3] = 0.0
    x.requires_grad_()
    g = tied((1, 2, 11, 13), torch.float32, device, seed=10)
    y, yr = ops.corner_pool(x, mode), ref.corner_pool(x, mode)
    torch.testing.assert_close(y, yr, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(torch.signbit(y), torch.signbit(yr))
    assert y.isnan().any()
    torch.testing.assert_close(grads(y, x, g)[0], grads(yr, x, g)[0], rtol=0, atol=0)


def test_huge_values_fp16():
    x = torch.tensor([65504.0, -65504.0, 1.0, 65504.0], dtype=torch.float16).view(1, 1, 1, 4)
    assert torch.equal(ops.corner_pool(x, "left"), ref.corner_pool(x, "left"))


@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_and_channels_last(mode, device):
    base = torch.randn(2, 5, 12, 17, device=device)
    for x in (base[:, ::2, 1:, ::3], base.transpose(2, 3), base.to(memory_format=torch.channels_last)):
        torch.testing.assert_close(ops.corner_pool(x, mode), ref.corner_pool(x, mode), rtol=0, atol=0)
        y = x.clone().requires_grad_()
        g = torch.randn_like(x).transpose(0, 1).contiguous().transpose(0, 1)  # a non-contiguous grad
        torch.testing.assert_close(grads(ops.corner_pool(y, mode), y, g)[0], grads(ref.corner_pool(y, mode), y, g)[0])
    a, b = base.transpose(2, 3), base.transpose(2, 3).flip(0)
    torch.testing.assert_close(ops.corner_pool_sum(a, b, "bottom_right"), ref.corner_pool_sum(a, b, "bottom_right"))


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 4), (2, 3, 4, 0)])
def test_empty_inputs(shape, device):
    x = torch.randn(shape, device=device, requires_grad=True)
    y = ops.corner_pool(x, "top")
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert ops.corner_pool_sum(x, x.detach(), "bottom_right").shape == x.shape


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 1, 40), (1, 1, 40, 1), (1, 1, 3, 33), (1, 1, 2, 65)])
def test_degenerate_and_chunk_edge_shapes(shape, device):
    for mode in MODES:
        x = tied(shape, torch.float32, device, seed=11).requires_grad_()
        g = tied(shape, torch.float32, device, seed=12)
        y, yr = ops.corner_pool(x, mode), ref.corner_pool(x, mode)
        assert torch.equal(y, yr)
        assert torch.equal(grads(y, x, g)[0], grads(yr, x, g)[0])


# ---- PyTorch integration ---------------------------------------------------------------------------


def test_opcheck(device):
    x = torch.randn(2, 3, 5, 7, device=device)
    for mode in MODES:
        torch.library.opcheck(torch.ops.fastdet.corner_pool.default, (x, mode))
        torch.library.opcheck(torch.ops.fastdet.corner_pool.default, (x.clone().requires_grad_(), mode))
        torch.library.opcheck(torch.ops.fastdet._corner_pool_backward.default, (torch.randn_like(x), x, mode))
    a, b = torch.randn_like(x), torch.randn_like(x)
    for corner in CORNERS:
        torch.library.opcheck(torch.ops.fastdet.corner_pool_sum.default, (a, b, corner))
        torch.library.opcheck(torch.ops.fastdet.corner_pool_sum.default,
                              (a.clone().requires_grad_(), b.clone().requires_grad_(), corner))
        torch.library.opcheck(torch.ops.fastdet._corner_pool_sum_backward.default, (torch.randn_like(x), a, b, corner))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager", dynamic=True)
    def f(a, b):
        return (ops.corner_pool_sum(a, b, "top_left") * ops.corner_pool(a, "right")).sum()

    a = torch.randn(2, 3, 6, 7, requires_grad=True)
    b = torch.randn(2, 3, 6, 7, requires_grad=True)
    out = f(a, b)
    want = (ref.corner_pool_sum(a, b, "top_left") * ref.corner_pool(a, "right")).sum()
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(grads(out, (a, b), None), grads(want, (a, b), None))


def test_autocast_keeps_dtype():
    x = torch.randn(1, 2, 4, 5, dtype=torch.bfloat16)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert ops.corner_pool(x, "top").dtype == torch.bfloat16


# ---- input validation ------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(1, 2, 3, 4)
    with pytest.raises(RuntimeError, match=r"fastdet::corner_pool: mode must be one of 'top', 'bottom', 'left', 'right', got 'up'"):
        ops.corner_pool(x, "up")
    with pytest.raises(RuntimeError, match=r"fastdet::corner_pool: mode must be one of"):
        ops.CornerPool("diagonal")
    with pytest.raises(RuntimeError, match=r"fastdet::corner_pool: input must have shape \[N, C, H, W\], got \[2, 3, 4\]"):
        ops.corner_pool(x[0], "top")
    with pytest.raises(RuntimeError, match=r"fastdet::corner_pool: input must be a floating-point tensor"):
        ops.corner_pool(x.long(), "top")
    with pytest.raises(RuntimeError, match=r"fastdet::corner_pool_sum: corner must be one of"):
        ops.corner_pool_sum(x, x, "middle")
    with pytest.raises(RuntimeError, match=r"fastdet::corner_pool_sum: a and b must have the same shape"):
        ops.corner_pool_sum(x, x[:, :, :2])
    with pytest.raises(RuntimeError, match=r"fastdet::corner_pool_sum: a and b must have the same dtype"):
        ops.corner_pool_sum(x, x.double())
    with pytest.raises(RuntimeError, match=r"fastdet::corner_pool_sum: b must have shape \[N, C, H, W\]"):
        ops.corner_pool_sum(x, x[0])
    with pytest.raises(RuntimeError, match=r"fastdet::_corner_pool_backward: grad must have the forward output's shape"):
        torch.ops.fastdet._corner_pool_backward(x[:, :1], x, "top")


@pytest.mark.cuda
def test_device_mismatch_raises():
    x = torch.randn(1, 2, 3, 4)
    with pytest.raises(RuntimeError, match=r"fastdet::corner_pool_sum: a and b must be on the same device"):
        ops.corner_pool_sum(x, x.cuda())


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu_large(dtype):
    # Rows longer than a tile chunk and more rows than a block, ties everywhere.
    x = tied((2, 3, 150, 301), dtype, seed=13, levels=9)
    b = tied((2, 3, 150, 301), dtype, seed=14, levels=9)
    g = tied((2, 3, 150, 301), dtype, seed=15, levels=5) - 2
    for mode in MODES:
        xc = x.cuda().requires_grad_()
        xh = x.clone().requires_grad_()
        yc, yh = ops.corner_pool(xc, mode), ops.corner_pool(xh, mode)
        assert torch.equal(yc.cpu(), yh)
        assert torch.equal(grads(yc, xc, g.cuda())[0].cpu(), grads(yh, xh, g)[0])
    for corner in CORNERS:
        ac, bc = x.cuda().requires_grad_(), b.cuda().requires_grad_()
        ah, bh = x.clone().requires_grad_(), b.clone().requires_grad_()
        yc, yh = ops.corner_pool_sum(ac, bc, corner), ops.corner_pool_sum(ah, bh, corner)
        assert torch.equal(yc.cpu(), yh)
        for u, v in zip(grads(yc, (ac, bc), g.cuda()), grads(yh, (ah, bh), g)):
            assert torch.equal(u.cpu(), v)
