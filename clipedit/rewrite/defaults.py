"""Default rewrite sites per architecture, as module-name templates relative to the image module."""
from __future__ import annotations

from torch import nn

from ..errors import SiteError
from ..nethook import get_module

# Image-module class name -> (template, block index). "{}" takes the index; negative counts from the end.
DEFAULT_SITES: dict[str, tuple[str, int]] = {
    "VisionTransformer": ("transformer.resblocks.{}.mlp.c_proj", 0),  # open_clip ViT
    "ModifiedResNet": ("layer3.{}.conv3", -1),  # open_clip CLIP ResNets
    "ResNet": ("layer3.{}.conv3", -1),  # timm and torchvision ResNet-50/101/152: last bottleneck of layer3
    # timm EfficientNet(-Lite): the last block of the second-to-last stage (conv_pwl+bn3 before its skip)
    "EfficientNet": ("blocks.5.{}.conv_pwl", -1),
    "VGG": ("features.{}", 34),  # torchvision vgg16_bn: conv5_1 (features.34) followed by its BN
    "MobileNetV3": ("blocks.4.{}.conv_pwl", -1),  # timm MobileNetV3: same block type as EfficientNet
}


def default_layer(image_module: nn.Module, prefix: str = "") -> str:
    """The default site for this architecture, as a dotted name (with ``prefix``, e.g. ``visual.``)."""
    arch = type(image_module).__name__
    if arch not in DEFAULT_SITES:
        raise SiteError(f"no default layer for {arch}; pass one with --layer")
    template, index = DEFAULT_SITES[arch]
    if index < 0:
        container = get_module(image_module, template.split(".{}")[0])
        index += len(container)
    return prefix + template.format(index)
