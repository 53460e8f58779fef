"""ONNX export of fastdet ops: one ``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``.

Usage::

    import fastdet.onnx
    prog = torch.onnx.export(model, args, dynamo=True, opset_version=19,
                             custom_translation_table=fastdet.onnx.onnx_translation_table())

Needs ``onnxscript`` (and ``onnx``). These ops export to standard ONNX operators (default domain,
opset 19) and run in onnxruntime (each is checked there against fastdet in tests/test_onnx.py):

==========================  ====================================================================
fastdet op                  ONNX
==========================  ====================================================================
``nms``                     ``NonMaxSuppression`` (one class) + ``Gather`` of column 2
``batched_nms``             ``Unique`` (dense class ids) + one ``NonMaxSuppression`` with a class
                            axis (scores [1, C, N], -inf for the other classes) + ``TopK`` (kept
                            indices by decreasing score, ties lower index first, as fastdet)
``multiclass_nms``          ``NonMaxSuppression`` per class (or one class-agnostic NMS) +
                            ``TopK``/``Gather``/``Where`` building the padded outputs
``roi_align``               ``RoiAlign`` (mode avg; aligned -> ``half_pixel``, else
                            ``output_half_pixel``; sampling_ratio <= 0 -> 0, adaptive)
``multi_scale_roi_align``   one ``RoiAlign`` per level over that level's RoIs (``NonZero`` +
                            ``Gather``) written into the output with ``ScatterND``; so
                            ``MultiScaleRoIAlign`` exports with any number of levels
``roi_pool``                ``MaxRoiPool`` (pooled output only; the argmax output, used only by
                            the backward, is exported as a constant -1 tensor)
``deform_conv2d``           ``DeformConv`` (opset 19)
``box_iou`` (and the IoU    elementwise arithmetic (``Min``/``Max``/``Div``/``Atan`` ...), the
losses)                     formulas of box_iou's docstring in fastdet's math type (fp32 for
                            fp16/bf16, fp64 for fp64: same eps and zero-area rules)
``corner_pool``,            ``ceil(log2(L))`` doubling steps ``y = Max(y, shift(y, 2^k))`` with
``corner_pool_sum``         -inf padding (``Pad`` + ``Slice``); exact (NaN propagates as in
                            fastdet). A static H/W gives the exact step count; a dynamic one is
                            exported with 16 steps: correct for H, W <= 65536
==========================  ====================================================================

``soft_nms``, ``border_align``, ``sigmoid_focal_loss``, ``simota_cost`` and ``simota_assign``
(:data:`UNSUPPORTED_OPS`) have no standard ONNX decomposition. By default exporting a graph that
calls one fails with an error that names the op (``fastdet.onnx: fastdet::soft_nms has no
standard ONNX operator ...``) rather than writing a model that no runtime can execute. With
``onnx_translation_table(custom_domain=True)`` each becomes one node of the custom ONNX domain
``fastdet`` (version 1): op type = op name, the op's tensor arguments as inputs (in schema order;
omitted optional ones dropped), its scalar arguments as attributes of the same names (bool as
int), the op's outputs as outputs; a :class:`CustomDomainWarning` says that the model needs a
runtime implementation of ``fastdet::<op>`` (e.g. an onnxruntime custom-op library registering the
domain ``fastdet``) to run.

Where the ONNX runtime's semantics differ from fastdet's (see the ops' docstrings):

* NonMaxSuppression runs in float32 (fp16/bf16/fp64 boxes and scores are cast to float32; the
  outputs are cast back); ``iou_threshold`` must lie in [0, 1] (onnxruntime rejects others).
  Degenerate input (NaN coordinates, zero-area or inverted boxes, NaN scores in ``nms``) may be
  treated differently: onnxruntime reorders inverted corners and never suppresses with a box of
  zero area. Equal scores are visited lower index first in onnxruntime, as in fastdet.
  ``batched_nms`` drops boxes whose score is NaN or -inf (fastdet keeps them) and builds a
  [C, N] score matrix (C = number of distinct class ids).
* RoiAlign in onnxruntime has no fastdet rules for RoIs with NaN/inf coordinates or a batch index
  outside [0, N) (fastdet gives zeros or an error); the adaptive grid is not capped at 512. In
  ``multi_scale_roi_align`` a RoI whose level is outside [0, levels) gives zeros (fastdet: an error).
* ``box_iou`` in ONNX agrees with fastdet to rounding (a few ulp: other operation fusing; CIoU's
  atan in fp64 is a series, as onnxruntime's Atan is float-only). ``corner_pool`` may return
  ``0.0`` where fastdet returns ``-0.0`` among tied zeros.
"""

from __future__ import annotations

import inspect
import math
import warnings

import torch

__all__ = ["onnx_translation_table", "UNSUPPORTED_OPS", "CUSTOM_DOMAIN", "CustomDomainWarning"]

#: fastdet ops with no standard ONNX decomposition: by default exporting one raises a RuntimeError
#: naming the op; ``onnx_translation_table(custom_domain=True)`` exports them as ``fastdet``-domain nodes.
UNSUPPORTED_OPS = ("soft_nms", "border_align", "sigmoid_focal_loss", "simota_cost", "simota_assign")

#: The ONNX domain (version 1) of the nodes written by ``onnx_translation_table(custom_domain=True)``.
CUSTOM_DOMAIN = "fastdet"


class CustomDomainWarning(UserWarning):
    """Warned when an op is exported as a node of the custom ONNX domain ``fastdet``."""


_FLOAT = 1  # onnx.TensorProto.FLOAT
_INT64 = 7  # onnx.TensorProto.INT64
_DOUBLE = 11  # onnx.TensorProto.DOUBLE

def _i64(op, values):
    return op.Constant(value_ints=list(values))


def _dim(op, x, axis: int):
    """x.shape[axis] as an int64 tensor of shape [1]."""
    return op.Shape(x, start=axis, end=axis + 1)


def _nms(op):
    def nms(boxes, scores, iou_threshold: float, max_output: int = -1):
        n = _dim(op, boxes, 0)
        b = op.Unsqueeze(op.Cast(boxes, to=_FLOAT), _i64(op, [0]))                 # [1, N, 4]
        s = op.Unsqueeze(op.Cast(scores, to=_FLOAT), _i64(op, [0, 1]))             # [1, 1, N]
        max_out = n if max_output < 0 else _i64(op, [max_output])
        thr = op.Constant(value_floats=[float(iou_threshold)])
        selected = op.NonMaxSuppression(b, s, max_out, thr, center_point_box=0)   # [K, 3]
        return op.Gather(selected, op.Constant(value_int=2), axis=1)

    return nms


def _multiclass_nms(op):
    def multiclass_nms(boxes, scores, score_threshold: float, iou_threshold: float, max_per_class: int,
                       max_total: int, class_agnostic: bool = False):
        per_class_boxes = len(boxes.shape) == 4
        big_b, n, c = _dim(op, scores, 0), _dim(op, scores, 1), _dim(op, scores, 2)
        s32 = op.Cast(scores, to=_FLOAT)
        b32 = op.Cast(boxes, to=_FLOAT)
        minus1, zero_1, one_1 = _i64(op, [-1]), _i64(op, [0]), _i64(op, [1])
        four = _i64(op, [4])
        nc = op.Mul(n, c)
        if class_agnostic:
            # One NMS over every (n, c) pair; pair p = n * C + c (ties to the lower n, then c).
            if per_class_boxes:
                rows = op.Reshape(b32, op.Concat(big_b, nc, four, axis=0))                      # [B, N*C, 4]
            else:
                expanded = op.Expand(op.Unsqueeze(b32, _i64(op, [2])), op.Concat(big_b, n, c, four, axis=0))
                rows = op.Reshape(expanded, op.Concat(big_b, nc, four, axis=0))
            nms_boxes, nms_scores = rows, op.Reshape(s32, op.Concat(big_b, one_1, nc, axis=0))    # [B, 1, N*C]
            limit = max_total
        elif per_class_boxes:
            # Per-class boxes: one NMS "batch" per (image, class): b' = b * C + c.
            nms_boxes = op.Reshape(op.Transpose(b32, perm=[0, 2, 1, 3]), op.Concat(minus1, n, four, axis=0))
            nms_scores = op.Reshape(op.Transpose(s32, perm=[0, 2, 1]), op.Concat(minus1, one_1, n, axis=0))
            rows = op.Reshape(b32, op.Concat(big_b, nc, four, axis=0))
            limit = max_per_class
        else:
            nms_boxes, nms_scores, rows = b32, op.Transpose(s32, perm=[0, 2, 1]), b32           # [B, C, N]
            limit = max_per_class
        selected = op.NonMaxSuppression(nms_boxes, nms_scores, _i64(op, [limit]),
                                        op.Constant(value_floats=[float(iou_threshold)]),
                                        op.Constant(value_floats=[float(score_threshold)]), center_point_box=0)
        # selected: [M, 3] (batch', class', box') in batch', class', visiting order.
        sel_score = op.GatherND(nms_scores, selected)                                            # [M]
        col = [op.Gather(selected, op.Constant(value_int=i), axis=1) for i in range(3)]
        c_scalar = op.Squeeze(c, zero_1)
        if class_agnostic:
            img, label, index, row = col[0], op.Mod(col[2], c_scalar), op.Div(col[2], c_scalar), col[2]
        elif per_class_boxes:
            img, label, index = op.Div(col[0], c_scalar), op.Mod(col[0], c_scalar), col[2]
            row = op.Add(op.Mul(index, c_scalar), label)
        else:
            img, label, index, row = col[0], col[1], col[2], col[2]
        # Dense [B, M + K] score matrix (-inf where the detection belongs to another image, and K
        # padding columns); a stable TopK (ties to the lower column: the lower class, then the NMS
        # visiting order) gives every image's first K detections by decreasing score. A kept score
        # is > score_threshold >= -inf, so -inf marks exactly the empty rows.
        m = _dim(op, selected, 0)
        images = op.Range(op.Constant(value_int=0), op.Squeeze(big_b, zero_1), op.Constant(value_int=1))
        mine = op.Equal(op.Unsqueeze(images, one_1), op.Unsqueeze(img, zero_1))                  # [B, M]
        neg_inf = op.Constant(value_float=float("-inf"))
        dense = op.Where(mine, op.Unsqueeze(sel_score, zero_1), neg_inf)
        pad = op.Expand(neg_inf, op.Concat(big_b, _i64(op, [max_total]), axis=0))
        top, column = op.TopK(op.Concat(dense, pad, axis=1), _i64(op, [max_total]), axis=1, largest=1, sorted=1)
        valid = op.Greater(top, neg_inf)                                                           # [B, K]
        safe = op.Where(valid, column, m)           # padding reads the extra row appended below
        minus_one = op.Constant(value_int=-1)

        def pick(values, fill):
            return op.Where(valid, op.Gather(op.Concat(values, minus1, axis=0), safe, axis=0), fill)

        labels, indices = pick(label, minus_one), pick(index, minus_one)
        # Boxes: rows[b, row] with an appended zero row for the padding.
        box_row = op.Unsqueeze(pick(row, op.Squeeze(op.Shape(rows, start=1, end=2), zero_1)), _i64(op, [2]))
        zero_box = op.Expand(op.Constant(value_float=0.0), op.Concat(big_b, one_1, four, axis=0))
        out_boxes = op.GatherND(op.Concat(rows, zero_box, axis=1), box_row, batch_dims=1)          # [B, K, 4]
        out_scores = op.Where(valid, top, op.Constant(value_float=0.0))
        num_dets = op.ReduceSum(op.Cast(valid, to=_INT64), one_1, keepdims=0)
        dtype = _onnx_dtype(scores.dtype)
        return (num_dets, op.Cast(out_boxes, to=dtype), op.Cast(out_scores, to=dtype), labels, indices)

    return multiclass_nms


def _onnx_dtype(dtype) -> int:
    """The ONNX element type of an exporter value's dtype (an onnx_ir DataType or an int)."""
    return int(dtype)


def _roi_align(op):
    def roi_align(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int,
                  aligned: bool):
        coords, batch_indices = _split_rois(op, rois, _onnx_dtype(input.dtype))
        return _roi_align_node(op, input, coords, batch_indices, spatial_scale, pooled_height, pooled_width,
                               sampling_ratio, aligned)

    return roi_align


def _roi_pool(op):
    def roi_pool(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
        rois = op.Cast(rois, to=_onnx_dtype(input.dtype))
        out = op.MaxRoiPool(input, rois, pooled_shape=[int(pooled_height), int(pooled_width)],
                            spatial_scale=float(spatial_scale))
        argmax = op.ConstantOfShape(op.Shape(out), value=_int64_tensor(-1))
        return out, argmax

    return roi_pool


def _batched_nms(op):
    # One NonMaxSuppression with a class axis: the class ids (any int64 values) are made dense with
    # Unique's inverse indices, and the scores are scattered into [1, C, N] with -inf (never above
    # the -inf score_threshold) for the other classes, so boxes of different classes never meet.
    # The kept boxes are then ordered by a TopK over a dense [N] score row (-inf where not kept):
    # decreasing score, ties to the lower index (TopK's documented tie rule), as fastdet.
    def batched_nms(boxes, scores, idxs, iou_threshold: float):
        n = _dim(op, boxes, 0)
        zero_1, one_1 = _i64(op, [0]), _i64(op, [1])
        b = op.Unsqueeze(op.Cast(boxes, to=_FLOAT), zero_1)                                      # [1, N, 4]
        s = op.Cast(scores, to=_FLOAT)                                                           # [N]
        classes, _, klass, _ = op.Unique(idxs, sorted=1)                                        # klass: [N] in [0, C)
        c = op.Squeeze(op.Shape(classes), zero_1)
        mine = op.Equal(op.Unsqueeze(op.Range(op.Constant(value_int=0), c, op.Constant(value_int=1)), one_1),
                        op.Unsqueeze(klass, zero_1))                                              # [C, N]
        neg_inf = op.Constant(value_float=float("-inf"))
        per_class = op.Unsqueeze(op.Where(mine, op.Unsqueeze(s, zero_1), neg_inf), zero_1)      # [1, C, N]
        selected = op.NonMaxSuppression(b, per_class, n, op.Constant(value_floats=[float(iou_threshold)]),
                                        op.Constant(value_floats=[float("-inf")]), center_point_box=0)
        kept = op.Gather(selected, op.Constant(value_int=2), axis=1)                             # [M]
        dense = op.ScatterElements(op.Expand(neg_inf, n), kept, op.Gather(s, kept), axis=0)      # [N]
        _, order = op.TopK(dense, _dim(op, selected, 0), axis=0, largest=1, sorted=1)
        return order

    return batched_nms


def _split_rois(op, rois, dtype: int):
    """fastdet rois [K, 5] -> RoiAlign's (rois [K, 4] in ``dtype``, batch_indices [K] int64)."""
    rois = op.Cast(rois, to=dtype)
    batch_indices = op.Cast(op.Gather(rois, op.Constant(value_int=0), axis=1), to=_INT64)
    return op.Slice(rois, _i64(op, [1]), _i64(op, [5]), _i64(op, [1])), batch_indices


def _roi_align_node(op, input, coords, batch_indices, spatial_scale: float, pooled_height: int, pooled_width: int,
                    sampling_ratio: int, aligned: bool):
    return op.RoiAlign(input, coords, batch_indices, mode="avg", output_height=int(pooled_height),
                       output_width=int(pooled_width), sampling_ratio=max(int(sampling_ratio), 0),
                       spatial_scale=float(spatial_scale),
                       coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel")


def _multi_scale_roi_align(op):
    # One RoiAlign per level over the RoIs of that level (NonZero + Gather), written into the
    # output rows with ScatterND: every RoI is pooled once, from its own level.
    def multi_scale_roi_align(features, rois, levels, spatial_scales: list[float], pooled_height: int,
                              pooled_width: int, sampling_ratio: int, aligned: bool):
        features = list(features)
        coords, batch_indices = _split_rois(op, rois, _onnx_dtype(features[0].dtype))
        zero_1 = _i64(op, [0])
        shape = op.Concat(_dim(op, rois, 0), _dim(op, features[0], 1), _i64(op, [pooled_height, pooled_width]),
                          axis=0)
        out = op.Expand(op.CastLike(op.Constant(value_float=0.0), features[0]), shape)           # [K, C, PH, PW]
        for level, (feature, scale) in enumerate(zip(features, spatial_scales)):
            pick = op.NonZero(op.Equal(levels, op.Constant(value_int=level)))                    # [1, K_l]
            rows = op.Squeeze(pick, zero_1)
            pooled = _roi_align_node(op, feature, op.Gather(coords, rows, axis=0),
                                     op.Gather(batch_indices, rows, axis=0), scale, pooled_height, pooled_width,
                                     sampling_ratio, aligned)
            out = op.ScatterND(out, op.Transpose(pick, perm=[1, 0]), pooled)
        return out

    return multi_scale_roi_align


def _scalar(op, value: float, dtype: int):
    """A 0-d constant of ONNX type ``dtype`` (float or double: exact for double)."""
    import onnx

    return op.Constant(value=onnx.helper.make_tensor("value", dtype, [], [value]))


def _math_dtype(dtype: int) -> int:
    """fastdet's math type: double for double, float for every other floating type."""
    return _DOUBLE if dtype == _DOUBLE else _FLOAT


_IOU_MODES = ("iou", "giou", "diou", "ciou")


def _atan(op, x, math_t: int):
    """atan(x): the Atan operator in float; in double (onnxruntime's CPU Atan is float-only) an
    argument reduction to |u| <= 1 (atan(t) = pi/2 - atan(1/t)), two half-angle steps
    (atan(u) = 2 atan(u / (1 + sqrt(1 + u^2)))) to |u| <= tan(pi/16) and the odd Taylor series to
    u^23 (truncation error < 0.2^25 / 25, below double rounding). inf -> pi/2, NaN -> NaN."""
    if math_t != _DOUBLE:
        return op.Atan(x)

    def c(v):
        return _scalar(op, v, math_t)

    t = op.Abs(x)
    inverted = op.Greater(t, c(1.0))
    u = op.Where(inverted, op.Div(c(1.0), t), t)
    for _ in range(2):
        u = op.Div(u, op.Add(c(1.0), op.Sqrt(op.Add(c(1.0), op.Mul(u, u)))))
    u2 = op.Mul(u, u)
    series = c((-1.0) ** 11 / 23.0)
    for k in range(10, -1, -1):
        series = op.Add(op.Mul(series, u2), c((-1.0) ** k / (2 * k + 1)))
    r = op.Mul(op.Mul(u, series), c(4.0))
    r = op.Where(inverted, op.Sub(c(math.pi / 2), r), r)
    return op.Mul(op.Sign(x), r)


def _box_iou(op):
    # The formulas of csrc/common/box_geometry.h (iou_family_with_angles), operation by operation, in
    # fastdet's math type; the pairwise form broadcasts [..., N, 1] against [..., 1, M].
    def box_iou(boxes1, boxes2, mode: str = "iou", aligned: bool = False, eps: float = 1e-7):
        if mode not in _IOU_MODES:
            raise RuntimeError(f"fastdet.onnx: fastdet::box_iou: mode must be one of {_IOU_MODES}, got '{mode}'")
        dtype = _onnx_dtype(boxes1.dtype)
        math_t = _math_dtype(dtype)
        a, b = op.Cast(boxes1, to=math_t), op.Cast(boxes2, to=math_t)
        if not aligned:
            a, b = op.Unsqueeze(a, _i64(op, [-2])), op.Unsqueeze(b, _i64(op, [-3]))
        ax1, ay1, ax2, ay2 = (op.Gather(a, op.Constant(value_int=i), axis=-1) for i in range(4))
        bx1, by1, bx2, by2 = (op.Gather(b, op.Constant(value_int=i), axis=-1) for i in range(4))
        zero, eps_c = _scalar(op, 0.0, math_t), _scalar(op, float(eps), math_t)
        wa, ha, wb, hb = op.Sub(ax2, ax1), op.Sub(ay2, ay1), op.Sub(bx2, bx1), op.Sub(by2, by1)
        iw = op.Max(op.Sub(op.Min(ax2, bx2), op.Max(ax1, bx1)), zero)
        ih = op.Max(op.Sub(op.Min(ay2, by2), op.Max(ay1, by1)), zero)
        inter = op.Mul(iw, ih)
        union = op.Sub(op.Add(op.Mul(wa, ha), op.Mul(wb, hb)), inter)
        out = op.Div(inter, op.Add(union, eps_c))
        if mode != "iou":
            iou = out
            cw = op.Max(op.Sub(op.Max(ax2, bx2), op.Min(ax1, bx1)), zero)
            ch = op.Max(op.Sub(op.Max(ay2, by2), op.Min(ay1, by1)), zero)
            if mode == "giou":
                enclose = op.Mul(cw, ch)
                out = op.Sub(iou, op.Div(op.Sub(enclose, union), op.Add(enclose, eps_c)))
            else:
                half = _scalar(op, 0.5, math_t)
                diag2 = op.Add(op.Add(op.Mul(cw, cw), op.Mul(ch, ch)), eps_c)
                dx = op.Mul(op.Sub(op.Sub(op.Add(ax1, ax2), bx1), bx2), half)
                dy = op.Mul(op.Sub(op.Sub(op.Add(ay1, ay2), by1), by2), half)
                out = op.Sub(iou, op.Div(op.Add(op.Mul(dx, dx), op.Mul(dy, dy)), diag2))
                if mode == "ciou":
                    def angle(w, h):  # atan(w / h), 0 for a 0 x 0 box
                        degenerate = op.And(op.Equal(w, zero), op.Equal(h, zero))
                        return op.Where(degenerate, zero, _atan(op, op.Div(w, h), math_t))

                    dangle = op.Sub(angle(wb, hb), angle(wa, ha))
                    v = op.Mul(_scalar(op, 4.0 / math.pi ** 2, math_t), op.Mul(dangle, dangle))
                    alpha = op.Div(v, op.Add(op.Add(op.Sub(_scalar(op, 1.0, math_t), iou), v), eps_c))
                    out = op.Sub(out, op.Mul(alpha, v))
        return op.Cast(out, to=dtype)

    return box_iou


#: Directional max of each corner-pool mode: (axis, True for a suffix max (towards the end), False for a prefix max).
_POOL_DIRECTIONS = {"top": (2, True), "bottom": (2, False), "left": (3, True), "right": (3, False)}
#: Doubling steps written for a dynamic H or W: exact for lengths up to 2**16.
_DYNAMIC_POOL_STEPS = 16


def _directional_max(op, x, mode: str):
    """Corner pooling as ceil(log2(L)) doubling steps y = Max(y, y shifted by 2^k) (-inf padding): after
    step k, y[i] is the max over 2^(k+1) positions from i in the pooling direction."""
    if mode not in _POOL_DIRECTIONS:
        raise RuntimeError(f"fastdet.onnx: fastdet::corner_pool: mode must be one of {tuple(_POOL_DIRECTIONS)}, "
                           f"got '{mode}'")
    axis, suffix = _POOL_DIRECTIONS[mode]
    length = x.shape[axis] if x.shape is not None else None
    steps = (max(int(length) - 1, 0).bit_length() if isinstance(length, int) else _DYNAMIC_POOL_STEPS)
    n = _dim(op, x, axis)
    axes = _i64(op, [axis])
    neg_inf = op.CastLike(op.Constant(value_float=float("-inf")), x)
    y = x
    for k in range(steps):
        shift = 1 << k
        pads = [0] * 8
        pads[axis + 4 if suffix else axis] = shift
        padded = op.Pad(y, _i64(op, pads), neg_inf)
        start = _i64(op, [shift if suffix else 0])
        y = op.Max(y, op.Slice(padded, start, op.Add(start, n), axes))
    return y


def _corner_pool(op):
    # Pooled in fastdet's math type (float for fp16/bf16: exact, values are only moved), as onnxruntime's
    # CPU provider has no bf16 Pad/Max.
    def corner_pool(input, mode: str):
        dtype = _onnx_dtype(input.dtype)
        return op.Cast(_directional_max(op, op.Cast(input, to=_math_dtype(dtype)), mode), to=dtype)

    return corner_pool


_CORNER_MODES = {"top_left": ("top", "left"), "bottom_right": ("bottom", "right"), "top_right": ("top", "right"),
                 "bottom_left": ("bottom", "left")}


def _corner_pool_sum(op):
    def corner_pool_sum(a, b, corner: str = "top_left"):
        if corner not in _CORNER_MODES:
            raise RuntimeError(f"fastdet.onnx: fastdet::corner_pool_sum: corner must be one of "
                               f"{tuple(_CORNER_MODES)}, got '{corner}'")
        vertical, horizontal = _CORNER_MODES[corner]
        dtype = _onnx_dtype(a.dtype)
        math_t = _math_dtype(dtype)
        pa = _directional_max(op, op.Cast(a, to=math_t), vertical)     # half: add in fp32, round once
        pb = _directional_max(op, op.Cast(b, to=math_t), horizontal)
        return op.Cast(op.Add(pa, pb), to=dtype)

    return corner_pool_sum


def _int64_tensor(v: int):
    import onnx

    return onnx.helper.make_tensor("value", onnx.TensorProto.INT64, [1], [v])


_EXPORTABLE = ("nms", "batched_nms", "multiclass_nms", "roi_align", "multi_scale_roi_align", "roi_pool",
               "deform_conv2d", "box_iou", "corner_pool", "corner_pool_sum")


def _unsupported(name: str):
    def fail(*args, **kwargs):
        raise RuntimeError(
            f"fastdet.onnx: fastdet::{name} has no standard ONNX operator, so it cannot be exported to ONNX. "
            f"Keep it outside the exported graph (e.g. run it in PyTorch after the ONNX model), use "
            f"torch.export / torch.compile, which support every fastdet op, or pass "
            f"onnx_translation_table(custom_domain=True) to export it as a node of the custom ONNX domain "
            f"'{CUSTOM_DOMAIN}' (which needs a runtime implementation of fastdet::{name}). Ops exported to "
            f"standard ONNX: {', '.join(_EXPORTABLE)}.")

    return fail


# torch schema type -> (Python annotation, onnx.defs.OpSchema.AttrType name) for scalar arguments.
_ATTRIBUTE_TYPES = {"float": (float, "FLOAT"), "int": (int, "INT"), "bool": (bool, "INT"), "str": (str, "STRING"),
                    "List[int]": (list, "INTS"), "List[float]": (list, "FLOATS")}
_TENSOR_TYPES = ["tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)", "tensor(int8)",
                 "tensor(int16)", "tensor(int32)", "tensor(int64)", "tensor(uint8)", "tensor(bool)"]


def _custom_domain_node(name: str):
    """The translation of fastdet::<name> into one node ``<name>`` of the ``fastdet`` domain (version 1):
    the op's tensor arguments become the node's inputs in schema order (optional ones may be omitted),
    its scalar arguments become attributes of the same names (bool -> int 0/1), its outputs the node's
    outputs. Built from the op's torch schema, so it cannot drift from the op's signature."""
    from onnx.defs import OpSchema
    from onnxscript.values import Op, Opset

    schema = getattr(torch.ops.fastdet, name).default._schema
    inputs, attributes, params, annotations = [], [], [], {}
    for arg in schema.arguments:
        kind = str(arg.type)
        default = arg.default_value if arg.has_default_value() else inspect.Parameter.empty
        if kind in ("Tensor", "Optional[Tensor]"):
            optional = kind != "Tensor"
            option = OpSchema.FormalParameterOption.Optional if optional else OpSchema.FormalParameterOption.Single
            inputs.append(OpSchema.FormalParameter(arg.name, f"T_{arg.name}", param_option=option))
        else:
            if kind not in _ATTRIBUTE_TYPES:
                raise NotImplementedError(
                    f"fastdet.onnx: fastdet::{name}: no ONNX attribute type for {arg.name}: {kind}")
            annotation, attr_type = _ATTRIBUTE_TYPES[kind]
            attributes.append((arg.name, kind, OpSchema.Attribute(arg.name, getattr(OpSchema.AttrType, attr_type), "")))
            annotations[arg.name] = annotation
        params.append(inspect.Parameter(arg.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                        annotation=annotations.get(arg.name, inspect.Parameter.empty)))
    outputs = [OpSchema.FormalParameter(r.name or f"output{i}", f"R{i}") for i, r in enumerate(schema.returns)]
    constraints = [(p.type_str, _TENSOR_TYPES, "") for p in inputs + outputs]
    onnx_schema = OpSchema(name, CUSTOM_DOMAIN, 1, doc=f"fastdet::{name} (see fastdet.ops.{name})", inputs=inputs,
                           outputs=outputs, type_constraints=constraints, attributes=[a for _, _, a in attributes])
    node = Op(Opset(CUSTOM_DOMAIN, 1), name, onnx_schema)
    signature = inspect.Signature(params)

    def translate(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        warnings.warn(
            f"fastdet.onnx: fastdet::{name} is exported as the node '{name}' of the custom ONNX domain "
            f"'{CUSTOM_DOMAIN}' (version 1), which standard ONNX runtimes do not implement: the model needs a "
            f"runtime implementation of fastdet::{name} (e.g. an onnxruntime custom-op library registering "
            f"domain '{CUSTOM_DOMAIN}') to run.", CustomDomainWarning, stacklevel=2)
        tensors = [bound.arguments[p.name] for p in inputs]
        attrs = {}
        for attr_name, kind, _ in attributes:
            value = bound.arguments[attr_name]
            attrs[attr_name] = int(value) if kind == "bool" else value
        return node(*tensors, **attrs)

    translate.__signature__ = signature
    translate.__annotations__ = dict(annotations)
    translate.__name__ = f"fastdet_{name}"
    return translate


def onnx_translation_table(custom_domain: bool = False) -> dict:
    """The ``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True, opset_version=19)``
    covering every fastdet op (see the module docstring for the mapping and its limits)::

        torch.onnx.export(model, args, dynamo=True, opset_version=19,
                          custom_translation_table=fastdet.onnx.onnx_translation_table())

    Needs ``onnxscript``.

    Args:
        custom_domain: what to do with the ops that have no standard ONNX decomposition
            (:data:`UNSUPPORTED_OPS`). False (default): their translation raises a RuntimeError
            naming the op, so no model that standard runtimes cannot execute is written. True: each
            becomes one node of the ONNX domain ``"fastdet"`` (version 1; op type = op name, the
            op's tensor arguments as inputs, its scalar arguments as attributes of the same names,
            bool as int), and a :class:`CustomDomainWarning` says that the model needs a runtime
            implementation of ``fastdet::<op>`` (e.g. an onnxruntime custom-op library) to run.
    """
    from onnxscript import opset19 as op

    import fastdet.ops  # noqa: F401  (registers the ops)
    from fastdet.ops.deform_conv2d import deform_conv2d_onnx_translation

    ops = torch.ops.fastdet
    table = {
        ops.nms.default: _nms(op),
        ops.batched_nms.default: _batched_nms(op),
        ops.multiclass_nms.default: _multiclass_nms(op),
        ops.roi_align.default: _roi_align(op),
        ops.multi_scale_roi_align.default: _multi_scale_roi_align(op),
        ops.roi_pool.default: _roi_pool(op),
        ops.box_iou.default: _box_iou(op),
        ops.corner_pool.default: _corner_pool(op),
        ops.corner_pool_sum.default: _corner_pool_sum(op),
    }
    table.update(deform_conv2d_onnx_translation())
    for name in UNSUPPORTED_OPS:
        for overload in getattr(ops, name).overloads():
            table[getattr(getattr(ops, name), overload)] = _custom_domain_node(name) if custom_domain \
                else _unsupported(name)
    return table
