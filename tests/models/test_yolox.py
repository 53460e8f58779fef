"""fastdet.models YOLOX against the official ``yolox`` package (0.3.0): state-dict keys of every size,
the raw network output and the detections in eval mode, the training losses (and gradients) with
the same weights and targets, the letterbox pre-processing, weight files and errors."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

with warnings.catch_warnings():  # thop (imported by yolox.utils) uses distutils' deprecated versions
    warnings.simplefilter("ignore", DeprecationWarning)
    yolox = pytest.importorskip("yolox")
    from yolox.models import YOLOPAFPN, YOLOXHead
    from yolox.models import YOLOX as OfficialYOLOX
    from yolox.utils import postprocess

from fastdet import models  # noqa: E402
from fastdet.models.detection.yolox import _CONFIGS as CONFIGS  # noqa: E402
from fastdet.models.detection.yolox import YOLOXExport, YOLOXTransform, xyxy_to_cxcywh  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # the official head's torch.cuda.amp.autocast

# Parameters (millions, 80 classes) of each size in the official README's model table: checks
# fastdet's depth / width / depthwise settings (which both models below are built with).
README_PARAMS_M = {"yolox_nano": 0.91, "yolox_tiny": 5.06, "yolox_s": 9.0, "yolox_m": 25.3, "yolox_l": 54.2,
                   "yolox_x": 99.1}
NUM_CLASSES = 3


def official(name, num_classes=NUM_CLASSES):
    """The official model as its exp's get_model builds it (BatchNorm eps 1e-3 / momentum 0.03,
    prior-probability biases)."""
    depth, width, depthwise, _ = CONFIGS[name]  # fastdet's table, checked against the README's sizes
    model = OfficialYOLOX(YOLOPAFPN(depth, width, depthwise=depthwise),
                          YOLOXHead(num_classes, width, depthwise=depthwise))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps, m.momentum = 1e-3, 0.03
    model.head.initialize_biases(1e-2)
    return model


def pair(name, size=128, seed=0, **kwargs):
    """A seeded official model and a fastdet model holding its weights. The BatchNorm statistics
    are set from a batch of images and the prediction biases drawn at random, so that features and
    scores vary (untrained statistics and the 1e-2 prior would leave every score near 1e-4)."""
    torch.manual_seed(seed)
    ref = official(name)
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    with torch.no_grad():
        ref.train()
        ref.backbone(torch.rand(2, 3, size, size) * 255)
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.03
        for pred in (*ref.head.cls_preds, *ref.head.obj_preds):
            pred.bias.normal_(0.0, 1.0)
    ours = getattr(models, name)(num_classes=NUM_CLASSES, input_size=size, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.eval(), ours.eval()


def random_targets(n, size, generator):
    xy = torch.rand(n, 2, generator=generator) * (size - 40)
    wh = torch.rand(n, 2, generator=generator) * 36 + 4
    return {"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, NUM_CLASSES, (n,), generator=generator)}


def official_labels(targets):
    """fastdet targets -> the official [B, max_gt, 5] (class, cx, cy, w, h), zero rows as padding."""
    labels = torch.zeros(len(targets), max(1, max(len(t["boxes"]) for t in targets)), 5)
    for i, t in enumerate(targets):
        n = len(t["boxes"])
        labels[i, :n, 0] = t["labels"].float()
        labels[i, :n, 1:] = xyxy_to_cxcywh(t["boxes"])
    return labels


def test_registry():
    assert set(CONFIGS) <= set(models.list_models())
    for name in CONFIGS:
        size = 416 if name in ("yolox_nano", "yolox_tiny") else 640  # the official exps' input sizes
        model = models.build_model(name, num_classes=2)
        assert model.transform.input_size == (size, size) and model.num_classes == 2 and model.training
    assert models.yolox_s().num_classes == 80
    assert not models.is_mask_model("yolox_s")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_keys_match_official(name):
    ref = {k: v.shape for k, v in official(name, num_classes=80).state_dict().items()}
    model = models.build_model(name)
    assert {k: v.shape for k, v in model.state_dict().items()} == ref
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - README_PARAMS_M[name]) < 0.01 * README_PARAMS_M[name]


@pytest.mark.parametrize("name, size", [("yolox_nano", 128), ("yolox_tiny", 96)])
def test_eval_parity_with_official(name, size):
    ref, ours = pair(name, size, score_thresh=0.3, nms_thresh=0.65, detections_per_img=1000)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        expected = ref(x.clone())
        got = ours.network(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
        num, boxes, scores, labels = ours.detect(x)
    # the official postprocess: best class per location, score >= conf, class-aware NMS
    dets = postprocess(expected.clone(), NUM_CLASSES, 0.3, 0.65)
    assert int(num.sum()) > 10
    for i, d in enumerate(dets):
        n = int(num[i])
        assert n == len(d)
        torch.testing.assert_close(boxes[i, :n], d[:, :4], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(scores[i, :n], d[:, 4] * d[:, 5], rtol=1e-5, atol=1e-6)
        assert torch.equal(labels[i, :n], d[:, 6].long())
        assert (labels[i, n:] == -1).all() and (scores[i, n:] == 0).all()


def test_eval_forward_maps_boxes_to_original_images():
    ref, ours = pair("yolox_nano", 128, score_thresh=0.3, detections_per_img=1000)
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(3, 96, 64, generator=g), torch.rand(3, 200, 256, generator=g)]
    with torch.no_grad():
        out = ours(images)
        batch, scales, _ = ours.transform(images)
        expected = postprocess(ref(batch), NUM_CLASSES, 0.3, 0.65)
    assert scales == [128 / 96, 0.5]
    for o, e, r in zip(out, expected, scales):
        assert set(o) == {"boxes", "scores", "labels"} and len(o["boxes"]) == len(e) > 0
        torch.testing.assert_close(o["boxes"], e[:, :4] / r, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(o["scores"], e[:, 4] * e[:, 5], rtol=1e-5, atol=1e-6)


def test_letterbox_matches_official_preproc():
    pytest.importorskip("cv2")
    # yolox.data imports its evaluators (which need tabulate): load only data_augment.py
    spec = importlib.util.spec_from_file_location("yolox_data_augment", yolox.__path__[0] + "/data/data_augment.py")
    augment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(augment)
    rng = torch.Generator().manual_seed(0)
    for (h, w), size in [((90, 120), (128, 128)), ((300, 200), (128, 160)), ((64, 64), (128, 128))]:
        bgr = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=rng)
        expected, r = augment.preproc(bgr.numpy(), size)
        rgb = bgr.flip(-1).permute(2, 0, 1).float() / 255
        batch, scales, targets = YOLOXTransform(size)([rgb], [{"boxes": torch.tensor([[0.0, 0.0, w, h]])}])
        assert scales == [r]
        torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[0.0, 0.0, w * r, h * r]]))
        # the official rounds the resized image to uint8; cv2's fixed-point weights add a little
        diff = (batch[0] - torch.from_numpy(expected)).abs()
        assert diff.max() <= 1.0 and diff.mean() < 0.35
        assert (batch[0, :, int(h * r):, :] == 114).all() and (batch[0, :, :, int(w * r):] == 114).all()


@pytest.mark.parametrize("name, use_l1, empty", [("yolox_nano", False, False), ("yolox_nano", True, True),
                                                 ("yolox_tiny", True, False)])
def test_training_losses_match_official(name, use_l1, empty):
    size = 96
    ref, ours = pair(name, size)
    ref.train(), ours.train()
    ref.head.use_l1, ours.use_l1 = use_l1, use_l1
    g = torch.Generator().manual_seed(3)
    targets = [random_targets(5, size, g), random_targets(0 if empty else 2, size, g), random_targets(1, size, g)]
    x = torch.rand(3, 3, size, size, generator=g) * 255
    out = ref(x.clone(), official_labels(targets))
    losses = ours.loss(x, targets)
    assert set(losses) == {"loss_iou", "loss_obj", "loss_cls"} | ({"loss_l1"} if use_l1 else set())
    for key, official_key in (("loss_iou", "iou_loss"), ("loss_obj", "conf_loss"), ("loss_cls", "cls_loss"),
                              ("loss_l1", "l1_loss")):
        if key in losses:
            torch.testing.assert_close(losses[key], out[official_key], rtol=1e-5, atol=1e-5)
    total = sum(losses.values())
    torch.testing.assert_close(total, out["total_loss"], rtol=1e-5, atol=1e-5)
    total.backward()
    out["total_loss"].backward()
    ref_params = dict(ref.named_parameters())
    for k, p in ours.named_parameters():  # summed over many anchors: compared by norm (measured <= 1e-5)
        expected = ref_params[k].grad
        assert (p.grad - expected).norm() <= 1e-4 * expected.norm() + 1e-7, k


class RecordingAssigner(torch.nn.Module):
    """Wraps a model's SimOTAAssigner and keeps the priors and assignment of its last call."""

    def __init__(self, assigner):
        super().__init__()
        self.assigner = assigner

    def forward(self, scores, boxes, priors, gt_boxes, gt_labels, gt_mask):
        out = self.assigner(scores, boxes, priors, gt_boxes, gt_labels, gt_mask)
        self.priors, self.gt_boxes, self.matched = priors, gt_boxes, out[0]
        return out


def foreground_centre_offsets(recorder):
    """|anchor centre - matched GT centre| / stride (max over x and y) of every foreground anchor."""
    fg = recorder.matched >= 0                                                    # [B, A]
    gt = torch.gather(recorder.gt_boxes, 1, recorder.matched.clamp(min=0)[..., None].expand(-1, -1, 4))
    centre = (gt[..., :2] + gt[..., 2:]) / 2
    offset = ((recorder.priors[None, :, :2] - centre).abs() / recorder.priors[None, :, 2:]).amax(-1)
    return offset[fg]


def test_simota_rule_yolox_in_loss():
    """simota_rule="yolox" (the current upstream rule: centre regions of 1.5 strides only) in the
    training loss: every foreground anchor lies strictly within 1.5 strides of its GT's centre, the
    assignment differs from the default "yolox-0.3.0" rule's (box-or-centre candidates, radius 2.5,
    1e5 penalty) on the same input, and the losses are finite and backpropagate."""
    size = 128
    g = torch.Generator().manual_seed(7)
    targets = []
    for _ in range(2):  # boxes of 40-80 px: many anchors inside a box but outside its centre region
        xy = torch.rand(3, 2, generator=g) * 40
        targets.append({"boxes": torch.cat([xy, xy + 40 + torch.rand(3, 2, generator=g) * 40], 1),
                        "labels": torch.randint(0, NUM_CLASSES, (3,), generator=g)})
    x = torch.rand(2, 3, size, size, generator=g) * 255
    offsets, matched = {}, {}
    for rule in ("yolox", "yolox-0.3.0"):
        _, ours = pair("yolox_nano", size, simota_rule=rule)
        ours.train()
        ours.assigner = RecordingAssigner(ours.assigner)
        losses = ours.loss(x, targets)
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        offsets[rule], matched[rule] = foreground_centre_offsets(ours.assigner), ours.assigner.matched
        assert len(offsets[rule]) > 0
    assert offsets["yolox"].max() < 1.5
    assert not torch.equal(matched["yolox"], matched["yolox-0.3.0"])


def test_training_forward_scales_targets():
    _, ours = pair("yolox_nano", 128)
    ours.train()
    g = torch.Generator().manual_seed(4)
    image = torch.rand(3, 64, 64, generator=g)
    t = random_targets(3, 64, g)
    t["boxes"] = t["boxes"].clamp(max=63)
    torch.manual_seed(0)
    losses = ours([image], [t])
    batch, _, _ = ours.transform([image])
    expected = ours.loss(batch, [{"boxes": t["boxes"] * 2, "labels": t["labels"]}])
    for k in losses:
        torch.testing.assert_close(losses[k], expected[k])
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in ours.parameters())


def test_label_offset():
    _, ours = pair("yolox_nano", 96, score_thresh=0.3)
    _, shifted = pair("yolox_nano", 96, score_thresh=0.3, label_offset=1)
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(6)) * 255
    with torch.no_grad():
        num, _, _, labels = ours.detect(x)
        num_shifted, _, _, labels_shifted = shifted.detect(x)
    assert torch.equal(num, num_shifted) and int(num.sum()) > 0
    assert torch.equal(labels_shifted, torch.where(labels >= 0, labels + 1, -1))
    g = torch.Generator().manual_seed(7)
    targets = [random_targets(3, 96, g), random_targets(0, 96, g)]
    expected = ours.train().loss(x, targets)
    got = shifted.train().loss(x, [{**t, "labels": t["labels"] + 1} for t in targets])
    for k in expected:
        torch.testing.assert_close(got[k], expected[k])
    with pytest.raises(ValueError, match=r"YOLOX: targets\[0\]\['labels'\] must be in \[1, 4\)"):
        shifted([torch.rand(3, 96, 96)], [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([0])}])


def test_no_detections():
    _, ours = pair("yolox_nano", 128, score_thresh=1.0)
    with torch.no_grad():
        out = ours([torch.rand(3, 100, 120)])
        num, boxes, scores, labels = ours.detect(torch.rand(2, 3, 128, 128) * 255)
    assert out[0]["boxes"].shape == (0, 4) and out[0]["labels"].dtype == torch.int64
    assert num.tolist() == [0, 0] and boxes.shape == (2, 100, 4) and (labels == -1).all()


def test_weights_from_official_checkpoint(tmp_path):
    ref, ours = pair("yolox_nano", 128)
    path = tmp_path / "yolox_nano.pth"
    torch.save({"model": ref.state_dict(), "start_epoch": 300}, path)  # the official checkpoint layout
    loaded = models.yolox_nano(weights=path, input_size=128).eval()
    assert loaded.num_classes == NUM_CLASSES  # from head.cls_preds.0.weight
    x = torch.rand(1, 3, 128, 128) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x), ours.network(x), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="yolox_tiny: .* does not match the model"):
        models.yolox_tiny(weights=path)
    with pytest.raises(ValueError, match="yolox_s: weights must be None or a local file path; nothing is downloaded"):
        models.yolox_s(weights="https://example.com/yolox_s.pth")
    with pytest.raises(FileNotFoundError, match="yolox_m: weights file not found"):
        models.yolox_m(weights=tmp_path / "missing.pth")


def test_bad_arguments():
    with pytest.raises(ValueError, match="YOLOX: input_size must be a positive multiple of 32"):
        models.yolox_nano(input_size=100)
    with pytest.raises(ValueError, match="YOLOX: num_classes must be >= 1"):
        models.yolox_nano(num_classes=0)
    with pytest.raises(ValueError, match="YOLOX: score_thresh and nms_thresh must be in"):
        models.yolox_nano(score_thresh=-0.1)
    with pytest.raises(ValueError, match="YOLOX: label_offset must be >= 0"):
        models.yolox_nano(label_offset=-1)
    with pytest.raises(ValueError, match="YOLOX: detections_per_img must be >= 1"):
        models.yolox_nano(detections_per_img=0)
    with pytest.raises(RuntimeError, match="simota_assign: rule must be one of"):
        models.yolox_nano(simota_rule="ota")
    with pytest.raises(TypeError):
        models.yolox_nano(min_size=128)
    model = models.yolox_nano(num_classes=2, input_size=64)
    image = torch.rand(3, 64, 64)
    good = {"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0]]), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match="YOLOX: targets are required in training mode"):
        model([image])
    with pytest.raises(ValueError, match=r"YOLOX: images\[0\] must have shape \[3, H, W\] \(RGB\)"):
        model([torch.rand(1, 64, 64)], [good])
    with pytest.raises(ValueError, match="YOLOX: images is empty"):
        model([], [])
    with pytest.raises(ValueError, match="YOLOX: targets must be a list with one dict per image"):
        model([image], [good, good])
    with pytest.raises(ValueError, match=r"YOLOX: targets\[0\]\['boxes'\] must have shape \[N, 4\]"):
        model([image], [{"boxes": torch.zeros(4), "labels": torch.zeros(1, dtype=torch.long)}])
    with pytest.raises(ValueError, match=r"YOLOX: targets\[0\]\['labels'\] must be a Tensor\[N\]"):
        model([image], [{"boxes": good["boxes"]}])
    with pytest.raises(ValueError, match=r"YOLOX: targets\[0\]\['boxes'\] has a box with no positive width"):
        model([image], [{"boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]]), "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match=r"YOLOX: targets\[0\]\['labels'\] must be in \[0, 2\)"):
        model([image], [{"boxes": good["boxes"], "labels": torch.tensor([2])}])
    with pytest.raises(TypeError, match="YOLOXTransform: images must be floating point"):
        model([torch.zeros(3, 64, 64, dtype=torch.uint8)], [good])


def test_onnx_export_with_nms_matches_eager():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import fastdet.onnx

    _, ours = pair("yolox_nano", 64, score_thresh=0.3, detections_per_img=50)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5)) * 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(YOLOXExport(ours), (x,), dynamo=True, opset_version=19,
                                 custom_translation_table=fastdet.onnx.onnx_translation_table())
    assert "NonMaxSuppression" in {n.op_type for n in prog.model_proto.graph.node}
    sess = ort.InferenceSession(prog.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = [torch.from_numpy(o) for o in sess.run(None, {sess.get_inputs()[0].name: x.numpy()})]
    with torch.no_grad():
        expected = ours.detect(x)
    assert int(expected[0].sum()) > 5
    assert torch.equal(got[0], expected[0]) and torch.equal(got[3], expected[3])
    # random weights give boxes up to ~1e8 px (exp of large raw sizes): relative agreement
    torch.testing.assert_close(got[1], expected[1], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got[2], expected[2], rtol=1e-5, atol=1e-6)
