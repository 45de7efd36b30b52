"""Segmentation networks of skd (PSPNet and DeepLabV3 on ResNet and MobileNetV2, SKD's and
mmsegmentation's variants), the discriminator, and checkpoint loading. See docs/models.md."""

from skd.models.checkpoint import (
    ModelFile,
    convert_official_state_dict,
    load_model,
    load_official,
    load_weights,
    read_model_file,
)
from skd.models.convention import MMSEG_INPUT, SKD_INPUT, InputSpec
from skd.models.counts import count_flops, count_parameters
from skd.models.discriminator import Discriminator
from skd.models.imagenet import BackboneInit, load_backbone
from skd.models.pspnet import ARCHS, PSPNet, build_pspnet, pspnet
from skd.models.segnet import (
    BACKBONES,
    CONFIG_FLAGS,
    HEADS,
    VARIANTS,
    PSPNetOutput,
    SegmentationNet,
    SegOutput,
    build_model,
    check_model_config,
    config_differences,
)

__all__ = [
    "ARCHS",
    "BACKBONES",
    "BackboneInit",
    "CONFIG_FLAGS",
    "Discriminator",
    "HEADS",
    "InputSpec",
    "MMSEG_INPUT",
    "ModelFile",
    "PSPNet",
    "PSPNetOutput",
    "SKD_INPUT",
    "SegOutput",
    "SegmentationNet",
    "VARIANTS",
    "build_model",
    "build_pspnet",
    "check_model_config",
    "config_differences",
    "convert_official_state_dict",
    "count_flops",
    "count_parameters",
    "load_backbone",
    "load_model",
    "load_official",
    "load_weights",
    "pspnet",
    "read_model_file",
]
