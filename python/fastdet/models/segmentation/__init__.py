"""Semantic segmenters: FCN, DeepLabV3 and LR-ASPP with torchvision's builders, keyword arguments
and state-dict keys, and U-Net. Each family module has a ``BUILDERS`` dict (name -> builder); this
package merges them into one. Losses for training them are in ``.losses``."""

from . import deeplabv3, fcn, lraspp, losses
from . import unet as _unet  # the module; `unet` below is its builder
from ._base import FCNHead, SegmentationModel
from .deeplabv3 import (ASPP, DeepLabHead, DeepLabV3, deeplabv3_mobilenet_v3_large, deeplabv3_resnet50,
                        deeplabv3_resnet101)
from .fcn import FCN, fcn_resnet50, fcn_resnet101
from .lraspp import LRASPP, LRASPPHead, lraspp_mobilenet_v3_large
from .unet import ResNetUNet, UNet, unet, unet_resnet18, unet_resnet34

BUILDERS = {**fcn.BUILDERS, **deeplabv3.BUILDERS, **lraspp.BUILDERS, **_unet.BUILDERS}

__all__ = ["ASPP", "DeepLabHead", "DeepLabV3", "FCN", "FCNHead", "LRASPP", "LRASPPHead", "ResNetUNet",
           "SegmentationModel", "UNet", "losses", *BUILDERS]
