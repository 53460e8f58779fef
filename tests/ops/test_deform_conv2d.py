"""fastdet::deform_conv2d against torchvision.ops.deform_conv2d and the pure-PyTorch reference."""

import pytest
import torch

from conftest import tol
from fastdet import ops
from fastdet.testing import deterministic_algorithms
from fastdet.ops._reference import deform_conv2d as ref

tv_ops = pytest.importorskip("torchvision.ops")

OP = torch.ops.fastdet.deform_conv2d.default
BACKWARD = torch.ops.fastdet._deform_conv2d_backward.default


def make(n=2, c=4, h=7, w=6, cout=6, k=3, groups=2, offset_groups=2, stride=1, padding=1, dilation=1,
         use_mask=True, use_bias=True, dtype=torch.float64, device="cpu", seed=0, scale=2.0):
    """Inputs with offsets of a few pixels (many points fall partly or wholly outside the map)."""
    g = torch.Generator().manual_seed(seed)
    kh, kw = (k, k) if isinstance(k, int) else k
    ho = (h + 2 * padding - (dilation * (kh - 1) + 1)) // stride + 1
    wo = (w + 2 * padding - (dilation * (kw - 1) + 1)) // stride + 1
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    offset = torch.randn(n, 2 * offset_groups * kh * kw, ho, wo, generator=g, dtype=torch.float64) * scale
    weight = torch.randn(cout, c // groups, kh, kw, generator=g, dtype=torch.float64)
    mask = torch.rand(n, offset_groups * kh * kw, ho, wo, generator=g, dtype=torch.float64) if use_mask else None
    bias = torch.randn(cout, generator=g, dtype=torch.float64) if use_bias else None
    cvt = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return dict(input=cvt(x), offset=cvt(offset), weight=cvt(weight), bias=cvt(bias), mask=cvt(mask),
                stride=stride, padding=padding, dilation=dilation)


def run(fn, args, grad_out=None):
    """Output and the gradients of (output * grad_out).sum() for input, offset, weight, bias, mask."""
    a = {k: (v.detach().clone().requires_grad_() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    s, p, d = (a["stride"],) * 2, (a["padding"],) * 2, (a["dilation"],) * 2
    out = fn(a["input"], a["offset"], a["weight"], a["bias"], s, p, d, mask=a["mask"])
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (out.to(grad_out.dtype) * grad_out.to(out.device)).sum().backward()
    names = ["input", "offset", "weight", "bias", "mask"]
    return out, {k: a[k].grad for k in names if a[k] is not None}


def assert_all_close(got, want, **kw):
    out_g, grads_g = got
    out_w, grads_w = want
    torch.testing.assert_close(out_g, out_w, **kw)
    assert grads_g.keys() == grads_w.keys()
    for k in grads_g:
        torch.testing.assert_close(grads_g[k], grads_w[k], **kw, msg=lambda m, k=k: f"grad {k}: {m}")


# ---- torchvision and the reference: forward and all five gradients -------------------------------

CONFIGS = [
    # n, c, h, w, cout, k, groups, offset_groups, stride, padding, dilation, mask, bias
    (2, 4, 7, 6, 6, 3, 2, 2, 1, 1, 1, True, True),
    (2, 4, 7, 6, 6, 3, 1, 1, 1, 1, 1, False, False),
    (3, 6, 6, 5, 4, 1, 1, 3, 2, 0, 1, False, True),
    (1, 4, 9, 8, 4, 5, 4, 1, 1, 2, 2, True, False),
    (2, 6, 8, 7, 6, (3, 2), 3, 2, (2), 1, 1, True, True),
    (1, 2, 9, 9, 3, 3, 1, 2, 3, 2, 3, True, True),
    (40, 4, 2, 3, 4, 3, 1, 2, 1, 1, 1, True, True),  # batch > 32, tiny spatial size
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_matches_torchvision_and_reference(cfg, device):
    n, c, h, w, cout, k, g, og, s, p, d, m, b = cfg
    args = make(n, c, h, w, cout, k, g, og, s, p, d, m, b, device=device)
    if not isinstance(k, int):  # torchvision wants pairs; make() already built rectangular kernels
        pass
    mine = run(ops.deform_conv2d, args)
    assert_all_close(mine, run(tv_ops.deform_conv2d, args), rtol=1e-9, atol=1e-9)
    assert_all_close(mine, run(ref.deform_conv2d, args), rtol=1e-9, atol=1e-9)


def test_large_batch_float32(device):
    args = make(n=37, c=8, h=4, w=4, cout=8, groups=1, offset_groups=1, dtype=torch.float32, device=device)
    assert_all_close(run(ops.deform_conv2d, args), run(tv_ops.deform_conv2d, args), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_vs_fp32(dtype, device):
    # Inputs rounded to the low dtype, reference computed in fp64 on the same rounded values.
    args = make(n=2, c=8, h=6, w=6, cout=4, groups=1, offset_groups=2, dtype=dtype, device=device)
    out, grads = run(ops.deform_conv2d, args)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads.values())
    wide = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    out_w, grads_w = run(ref.deform_conv2d, wide)
    scale = lambda t: max(1.0, t.abs().max().item())  # noqa: E731
    rt = 2e-2 if dtype == torch.bfloat16 else 4e-3
    torch.testing.assert_close(out.double(), out_w, rtol=rt, atol=rt * scale(out_w))
    for k in grads:
        torch.testing.assert_close(grads[k].double(), grads_w[k], rtol=rt, atol=rt * scale(grads_w[k]),
                                   msg=lambda m, k=k: f"grad {k}: {m}")


# ---- adversarial and edge cases -------------------------------------------------------------------


def test_zero_offsets_equal_conv2d(device):
    args = make(n=2, c=4, h=6, w=5, cout=6, groups=2, offset_groups=1, use_mask=False, device=device)
    args["offset"] = torch.zeros_like(args["offset"])
    out = ops.deform_conv2d(args["input"], args["offset"], args["weight"], args["bias"], 1, 1, 1)
    want = torch.nn.functional.conv2d(args["input"], args["weight"], args["bias"], 1, 1, 1, groups=2)
    torch.testing.assert_close(out, want, **tol(torch.float64))


def test_nan_and_inf_offsets_sample_zero(device):
    args = make(n=1, c=2, h=5, w=5, cout=2, groups=1, offset_groups=1, use_bias=False, device=device)
    args["offset"][:, :4] = float("nan")
    args["offset"][:, 4:8] = float("inf")
    args["offset"][:, 8:10] = -float("inf")
    args["input"][0, :, 0, 0] = float("nan")  # only reachable through points with weight > 0 there
    args["offset"][:, 10:] = 50.0  # every other tap far outside
    out, grads = run(ops.deform_conv2d, args)
    assert torch.equal(out, torch.zeros_like(out))
    for k in ("input", "offset", "mask"):
        assert torch.equal(grads[k], torch.zeros_like(grads[k])), k


def test_empty_batch(device):
    args = make(n=0, device=device)
    out, grads = run(ops.deform_conv2d, args)
    assert out.shape == (0, 6, 7, 6)
    assert torch.equal(grads["weight"], torch.zeros_like(grads["weight"]))


def test_non_contiguous_inputs(device):
    args = make(n=2, c=4, h=6, w=6, device=device)
    nc = dict(args)
    nc["input"] = args["input"].to(memory_format=torch.channels_last)
    nc["offset"] = args["offset"].transpose(2, 3).contiguous().transpose(2, 3)
    assert_all_close(run(ops.deform_conv2d, nc), run(ops.deform_conv2d, args), rtol=1e-12, atol=1e-12)


# ---- deterministic mode: grad_input by the gather of ops/deform_conv2d.h --------------------------


def run_deterministic(args):
    with deterministic_algorithms():
        return run(ops.deform_conv2d, args)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_deterministic_backward_matches_default(cfg, device):
    args = make(*cfg, device=device)
    assert_all_close(run_deterministic(args), run(ops.deform_conv2d, args), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_deterministic_backward_edge_points(dtype, device):
    # Points on grid lines, on the borders (y = -1 and y = H sample nothing; y = H - 1 one row),
    # just inside them, far outside, and NaN/inf: each is a boundary case of the cell search.
    args = make(n=2, c=4, h=6, w=5, cout=3, groups=1, offset_groups=2, dtype=torch.float64, seed=3)
    values = torch.tensor([0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -3.0, 1e-3, -1e-3, 4.999, 6.0, -6.0, 40.0,
                           float("nan"), float("inf"), -float("inf")], dtype=torch.float64)
    pick = torch.randint(len(values), args["offset"].shape, generator=torch.Generator().manual_seed(4))
    args["offset"] = values[pick]
    args = {k: (v.to(device=device, dtype=dtype) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    want, got = run(ops.deform_conv2d, args), run_deterministic(args)
    assert_all_close(got, want, **tol(dtype))


def test_deterministic_backward_in_chunks(device):
    # C * KK * HWO = 5.76M per image: the CPU gather runs in chunks of 2 images (n0 > 0 paths).
    args = make(n=3, c=16, h=120, w=120, cout=4, k=5, groups=1, offset_groups=2, padding=2, dtype=torch.float32,
                device=device)
    assert_all_close(run_deterministic(args), run(ops.deform_conv2d, args), rtol=1e-4, atol=1e-4)


def test_deterministic_cpu_backward_is_thread_count_independent():
    args = make(n=5, c=8, h=12, w=11, cout=8, groups=2, offset_groups=4, dtype=torch.float32, seed=5)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results.append(run_deterministic(args))
    for name in results[0][1]:
        assert torch.equal(results[0][1][name], results[1][1][name]), name


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_deterministic_backward_is_bitwise_repeatable(dtype):
    # Large offsets of one sign pile many points onto few cells: many sums per element.
    args = make(n=3, c=32, h=20, w=24, cout=16, groups=1, offset_groups=2, dtype=dtype, device="cuda", seed=6)
    args["offset"] = args["offset"].abs() * 3
    runs = [run_deterministic(args)[1] for _ in range(3)]
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]) and torch.equal(runs[0][name], runs[2][name]), name
    atomic = run(ops.deform_conv2d, args)[1]
    for name in runs[0]:
        scale = max(1.0, atomic[name].abs().max().item())
        torch.testing.assert_close(runs[0][name], atomic[name], rtol=tol(dtype)["rtol"] * 10,
                                   atol=tol(dtype)["atol"] * 10 * scale, msg=lambda m, k=name: f"grad {k}: {m}")


# ---- input validation -----------------------------------------------------------------------------


def _call(args, **over):
    a = dict(args, **over)
    return OP(a["input"], a["offset"], a["weight"], a["bias"], a["mask"], [a["stride"]] * 2, [a["padding"]] * 2,
              [a["dilation"]] * 2)


@pytest.mark.parametrize("change,match", [
    (lambda a: dict(offset=a["offset"][:, :-1]), "offset.size\\(1\\) must be a positive multiple"),
    (lambda a: dict(offset=a["offset"][:, :, :-1]), "offset must have shape"),
    (lambda a: dict(mask=a["mask"][:, :-1]), "mask must have shape"),
    (lambda a: dict(weight=torch.randn(6, 3, 3, 3, dtype=torch.float64)), "weight.size\\(1\\) must divide"),
    (lambda a: dict(weight=a["weight"][:5]), "weight.size\\(0\\) must be divisible by groups"),
    # zero input channels would mean zero groups (a division by zero before this was checked)
    (lambda a: dict(input=a["input"][:, :0]), "weight.size\\(1\\) must divide the input's channel count"),
    (lambda a: dict(bias=a["bias"][:2]), "bias must have shape"),
    (lambda a: dict(input=a["input"][0]), "input must have shape"),
    (lambda a: dict(weight=a["weight"].float()), "input and weight must have the same dtype"),
    (lambda a: dict(mask=a["mask"].float()), "input and mask must have the same dtype"),
    (lambda a: dict(input=a["input"].long(), offset=a["offset"].long(), weight=a["weight"].long(), bias=None,
                    mask=None), "input must be a floating-point tensor"),
    (lambda a: dict(stride=0), "stride must be >= 1"),
    (lambda a: dict(padding=-1), "padding must be >= 0"),
    (lambda a: dict(padding=0, dilation=5), "the output would be empty"),
])
def test_errors(change, match):
    args = make()
    with pytest.raises(RuntimeError, match="fastdet::deform_conv2d: " + match):
        _call(args, **change(args))


def test_offset_groups_must_divide_channels():
    args = make(c=4, groups=1, offset_groups=3)
    with pytest.raises(RuntimeError, match="fastdet::deform_conv2d: the input's channel count 4 must be divisible"):
        _call(args)


def test_backward_zero_input_channels_error():
    args = make()
    with pytest.raises(RuntimeError, match="fastdet::_deform_conv2d_backward: weight.size\\(1\\) must divide"):
        BACKWARD(torch.zeros(2, 6, 7, 6, dtype=torch.float64), args["input"][:, :0], args["offset"], args["weight"],
                 args["mask"], [1, 1], [1, 1], [1, 1])


def test_backward_grad_shape_error():
    args = make()
    with pytest.raises(RuntimeError, match="fastdet::_deform_conv2d_backward: grad must have the output's shape"):
        BACKWARD(torch.zeros(1, 1, 1, 1, dtype=torch.float64), args["input"], args["offset"], args["weight"],
                 args["mask"], [1, 1], [1, 1], [1, 1])


@pytest.mark.cuda
def test_device_mismatch_error():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    args = make()
    with pytest.raises(RuntimeError, match="fastdet::deform_conv2d: input and offset must be on the same device"):
        _call(args, offset=args["offset"].cuda())


# ---- autograd, opcheck, compile, autocast, modules ------------------------------------------------


@pytest.mark.parametrize("use_mask", [True, False])
def test_gradcheck(use_mask, device):
    # small: every offset/mask element is a gradcheck column (offset groups and weight groups both 2)
    args = make(n=1, c=2, h=3, w=3, cout=2, groups=2, offset_groups=2, use_mask=use_mask, device=device, scale=0.7)
    names = ["input", "offset", "weight", "bias"] + (["mask"] if use_mask else [])
    ts = [args[k].detach().clone().requires_grad_() for k in names]

    def fn(*t):
        d = dict(zip(names, t))
        return ops.deform_conv2d(d["input"], d["offset"], d["weight"], d["bias"], 1, 1, 1, d.get("mask"))

    assert torch.autograd.gradcheck(fn, ts, eps=1e-6, atol=1e-5, nondet_tol=1e-10 if device == "cuda" else 0.0)


def test_double_backward_raises():
    args = make(n=1, c=2, h=4, w=4, cout=2, groups=1, offset_groups=1, use_bias=False)
    x = args["input"].requires_grad_()
    out = ops.deform_conv2d(x, args["offset"], args["weight"], None, 1, 1, 1, args["mask"])
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        g.sum().backward()


@pytest.mark.parametrize("use_mask", [True, False])
def test_opcheck(use_mask, device):
    args = make(n=2, c=4, h=5, w=5, cout=2, use_mask=use_mask, device=device)
    for k in ("input", "offset", "weight", "bias") + (("mask",) if use_mask else ()):
        args[k].requires_grad_()
    torch.library.opcheck(OP, (args["input"], args["offset"], args["weight"], args["bias"], args["mask"], [1, 1],
                               [1, 1], [1, 1]))


def test_torch_compile(device):
    args = make(n=2, c=4, h=5, w=5, cout=2, device=device)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, off, w, b, m):
        return ops.deform_conv2d(x, off, w, b, padding=1, mask=m).relu()

    got = f(args["input"], args["offset"], args["weight"], args["bias"], args["mask"])
    want = ops.deform_conv2d(args["input"], args["offset"], args["weight"], args["bias"], padding=1,
                             mask=args["mask"]).relu()
    torch.testing.assert_close(got, want)


def test_autocast_cpu_runs_in_fp32():
    args = make(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.deform_conv2d(args["input"].bfloat16(), args["offset"], args["weight"], args["bias"], 1, 1, 1,
                                args["mask"])
    assert out.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.cuda
def test_autocast_cuda_runs_in_low_precision(dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    args = make(dtype=torch.float32, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out = ops.deform_conv2d(args["input"], args["offset"], args["weight"], args["bias"], 1, 1, 1, args["mask"])
    assert out.dtype == dtype


def test_modules(device):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8, device=device)
    m = ops.DeformConv2d(4, 6, 3, padding=1, groups=2).to(device)
    off = torch.randn(2, 18, 8, 8, device=device)
    tvm = tv_ops.DeformConv2d(4, 6, 3, padding=1, groups=2).to(device)
    tvm.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x, off), tvm(x, off))
    for cls in (ops.DeformConv2dPack, ops.ModulatedDeformConv2dPack):
        pack = cls(4, 6, 3, padding=1, offset_groups=2).to(device)
        conv = torch.nn.functional.conv2d(x, pack.weight, pack.bias, padding=1)
        scale = 0.5 if cls is ops.ModulatedDeformConv2dPack else 1.0  # zero-initialised: offsets 0, mask 0.5
        torch.testing.assert_close(pack(x), scale * (conv - pack.bias.view(1, -1, 1, 1)) + pack.bias.view(1, -1, 1, 1),
                                   rtol=1e-5, atol=1e-5)
        pack(x).sum().backward()
        assert pack.conv_offset.weight.grad is not None and pack.weight.grad is not None
    with pytest.raises(ValueError, match="divisible by groups"):
        ops.DeformConv2d(4, 6, 3, groups=4)


def test_onnx_export_runs_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = ops.ModulatedDeformConv2dPack(4, 6, 3, stride=2, padding=1, groups=2, offset_groups=2).eval()
    torch.nn.init.normal_(model.conv_offset.weight, std=0.3)  # non-zero offsets and masks
    x = torch.randn(2, 4, 9, 8)
    prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=19,
                             custom_translation_table=ops.deform_conv2d_onnx_translation())
    assert "DeformConv" in [n.op_type for n in prog.model_proto.graph.node]
    sess = ort.InferenceSession(prog.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-4)
