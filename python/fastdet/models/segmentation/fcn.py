"""FCN (Long et al. 2015, "Fully Convolutional Networks for Semantic Segmentation") on a dilated
ResNet: torchvision's builders, keyword arguments and state-dict keys."""

from __future__ import annotations

from ._base import BuildArgs, FCNHead, SegmentationModel, dilated_resnet


class FCN(SegmentationModel):
    """backbone -> FCNHead, plus an FCNHead on layer3 when aux_loss (see SegmentationModel)."""


def _fcn_resnet(fn: str, depth: int, weights, weights_backbone, num_classes, aux_loss, kwargs) -> FCN:
    args = BuildArgs(fn, weights, weights_backbone, num_classes, aux_loss, "classifier.4.weight", kwargs)
    backbone = dilated_resnet(args, depth)
    aux = FCNHead(1024, args.num_classes) if args.aux_loss else None
    return args.finish(FCN(backbone, FCNHead(2048, args.num_classes), aux))


_DOC = """FCN with a ResNet-{depth} backbone (layer3/layer4 dilated, output stride 8).

    Keyword arguments as torchvision's builder:
        weights: None or a local state dict file (nothing downloads); num_classes and aux_loss then
            default to the checkpoint's.
        progress: accepted for compatibility (nothing downloads).
        num_classes: classes including the background (default 21, Pascal VOC).
        aux_loss: add the auxiliary FCNHead on layer3 (output "aux").
        weights_backbone: None or a local ResNet-{depth} classification state dict.
    Returns an FCN: forward(images Tensor[B, 3, H, W]) -> {{"out": Tensor[B, C, H, W][, "aux": ...]}}.
    """


def fcn_resnet50(*, weights=None, progress: bool = True, num_classes=None, aux_loss=None, weights_backbone=None,
                 **kwargs) -> FCN:
    return _fcn_resnet("fcn_resnet50", 50, weights, weights_backbone, num_classes, aux_loss, kwargs)


def fcn_resnet101(*, weights=None, progress: bool = True, num_classes=None, aux_loss=None, weights_backbone=None,
                  **kwargs) -> FCN:
    return _fcn_resnet("fcn_resnet101", 101, weights, weights_backbone, num_classes, aux_loss, kwargs)


fcn_resnet50.__doc__ = _DOC.format(depth=50)
fcn_resnet101.__doc__ = _DOC.format(depth=101)

BUILDERS = {f.__name__: f for f in (fcn_resnet50, fcn_resnet101)}
