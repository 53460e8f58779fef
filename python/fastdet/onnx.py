"""ONNX export of fastdet ops: one ``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``.

Usage::

    import fastdet.onnx
    prog = torch.onnx.export(model, args, dynamo=True, opset_version=19,
                             custom_translation_table=fastdet.onnx.onnx_translation_table())

Needs ``onnxscript`` (and ``onnx``); the exported graphs use only standard ONNX operators (default
domain, opset 19) and run in onnxruntime:

==========================  ====================================================================
fastdet op                  ONNX
==========================  ====================================================================
``nms``                     ``NonMaxSuppression`` (one class) + ``Gather`` of column 2
``multiclass_nms``          ``NonMaxSuppression`` per class (or one class-agnostic NMS) +
                            ``TopK``/``Gather``/``Where`` building the padded outputs
``roi_align``               ``RoiAlign`` (mode avg; aligned -> ``half_pixel``, else
                            ``output_half_pixel``; sampling_ratio <= 0 -> 0, adaptive)
``roi_pool``                ``MaxRoiPool`` (pooled output only; the argmax output, used only by
                            the backward, is exported as a constant -1 tensor)
``deform_conv2d``           ``DeformConv`` (opset 19)
==========================  ====================================================================

Every other fastdet op (``batched_nms``, ``soft_nms``, ``multi_scale_roi_align``, ``border_align``,
``corner_pool``, ``corner_pool_sum``, ``box_iou`` and the IoU losses, ``sigmoid_focal_loss``,
``simota_cost``, ``simota_assign``) has no standard ONNX counterpart: exporting a graph that
calls one fails with an error that names the op (``fastdet.onnx: fastdet::soft_nms has no
standard ONNX operator ...``) rather than writing a model that no runtime can execute.
(``MultiScaleRoIAlign`` with a single feature level calls ``roi_align`` and exports.)

Where the ONNX runtime's semantics differ from fastdet's (see the ops' docstrings):

* NonMaxSuppression runs in float32 (fp16/bf16/fp64 boxes and scores are cast to float32; the
  outputs are cast back); ``iou_threshold`` must lie in [0, 1] (onnxruntime rejects others).
  Degenerate input (NaN coordinates, zero-area or inverted boxes, NaN scores in ``nms``) may be
  treated differently: onnxruntime reorders inverted corners and never suppresses with a box of
  zero area. Equal scores are visited lower index first in onnxruntime, as in fastdet.
* RoiAlign in onnxruntime has no fastdet rules for RoIs with NaN/inf coordinates or a batch index
  outside [0, N) (fastdet gives zeros or an error); the adaptive grid is not capped at 512.
"""

from __future__ import annotations

import torch

__all__ = ["onnx_translation_table", "UNSUPPORTED_OPS"]

#: fastdet ops with no standard ONNX operator: exporting them raises a RuntimeError naming the op.
UNSUPPORTED_OPS = ("batched_nms", "soft_nms", "multi_scale_roi_align", "border_align", "corner_pool",
                   "corner_pool_sum", "box_iou", "sigmoid_focal_loss", "simota_cost", "simota_assign")

_FLOAT = 1  # onnx.TensorProto.FLOAT
_INT64 = 7  # onnx.TensorProto.INT64


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
        rois = op.Cast(rois, to=_onnx_dtype(input.dtype))
        batch_indices = op.Cast(op.Gather(rois, op.Constant(value_int=0), axis=1), to=_INT64)
        coords = op.Slice(rois, _i64(op, [1]), _i64(op, [5]), _i64(op, [1]))
        return op.RoiAlign(input, coords, batch_indices, mode="avg", output_height=int(pooled_height),
                           output_width=int(pooled_width), sampling_ratio=max(int(sampling_ratio), 0),
                           spatial_scale=float(spatial_scale),
                           coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel")

    return roi_align


def _roi_pool(op):
    def roi_pool(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
        rois = op.Cast(rois, to=_onnx_dtype(input.dtype))
        out = op.MaxRoiPool(input, rois, pooled_shape=[int(pooled_height), int(pooled_width)],
                            spatial_scale=float(spatial_scale))
        argmax = op.ConstantOfShape(op.Shape(out), value=_int64_tensor(-1))
        return out, argmax

    return roi_pool


def _int64_tensor(v: int):
    import onnx

    return onnx.helper.make_tensor("value", onnx.TensorProto.INT64, [1], [v])


def _unsupported(name: str):
    def fail(*args, **kwargs):
        raise RuntimeError(
            f"fastdet.onnx: fastdet::{name} has no standard ONNX operator, so it cannot be exported to ONNX. "
            f"Keep it outside the exported graph (e.g. run it in PyTorch after the ONNX model), or use "
            f"torch.export / torch.compile, which support every fastdet op. Exportable ops: nms, "
            f"multiclass_nms, roi_align, roi_pool, deform_conv2d.")

    return fail


def onnx_translation_table() -> dict:
    """The ``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True, opset_version=19)``
    covering every fastdet op (see the module docstring for the mapping and its limits)::

        torch.onnx.export(model, args, dynamo=True, opset_version=19,
                          custom_translation_table=fastdet.onnx.onnx_translation_table())

    Needs ``onnxscript``. Ops without a standard ONNX counterpart are in the table too: their
    translation raises a RuntimeError naming the op.
    """
    from onnxscript import opset19 as op

    import fastdet.ops  # noqa: F401  (registers the ops)
    from fastdet.ops.deform_conv2d import deform_conv2d_onnx_translation

    ops = torch.ops.fastdet
    table = {
        ops.nms.default: _nms(op),
        ops.multiclass_nms.default: _multiclass_nms(op),
        ops.roi_align.default: _roi_align(op),
        ops.roi_pool.default: _roi_pool(op),
    }
    table.update(deform_conv2d_onnx_translation())
    for name in UNSUPPORTED_OPS:
        for overload in getattr(ops, name).overloads():
            table[getattr(getattr(ops, name), overload)] = _unsupported(name)
    return table
