"""Builders: MR R-CNN and its Mask R-CNN control on the paper's three backbones, and a small CPU model.

Every ``mrrcnn_*`` builder has a ``maskrcnn_*`` twin that builds torchvision's ``MaskRCNN`` with the same
backbone and heads, so the control and the method differ only by the refining module. Both use
:class:`~mrrcnn.ops.MultiScaleShapeAwareRoIAlign` as their RoI poolers: without masks it is torchvision's
RoIAlign, to float rounding, several times faster on CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import (
    ResNet50_Weights,
    ResNet101_Weights,
    ResNeXt101_32X8D_Weights,
    WeightsEnum,
    resnet,
)
from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import AnchorGenerator
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..ops import MultiScaleShapeAwareRoIAlign
from .mask_refining_rcnn import MaskRefiningRCNN
from .transform import ScaleTransform

WeightsLike = str | Path | WeightsEnum | None

# torchvision trunk: (its ImageNet weights enum, torchvision's COCO Mask R-CNN weights enum if any)
_TRUNKS = {
    "resnet50": (ResNet50_Weights, MaskRCNN_ResNet50_FPN_Weights),
    "resnet101": (ResNet101_Weights, None),
    "resnext101_32x8d": (ResNeXt101_32X8D_Weights, None),
}


def zero_frozen_batch_norm_eps(model: nn.Module) -> None:
    """Set every ``FrozenBatchNorm2d``'s eps to 0, as torchvision does for its COCO Mask R-CNN weights,
    which were trained before torchvision's eps fix (pytorch/vision#2933)."""
    for module in model.modules():
        if isinstance(module, misc_nn_ops.FrozenBatchNorm2d):
            module.eps = 0.0


def _channels_last_heads(model: MaskRCNN) -> MaskRCNN:
    """``model`` with its RoI heads' conv weights channels-last, as the pooled features they read: the
    weight gradients then come back in their weights' layout, which autograd would otherwise copy each step
    (3x3 kernels) and DDP's buckets warn about (1x1 kernels, "Grad strides do not match bucket view
    strides")."""
    model.roi_heads.to(memory_format=torch.channels_last)
    return model


def _fast_poolers() -> dict[str, MultiScaleShapeAwareRoIAlign]:
    names = ["0", "1", "2", "3"]
    return {
        "box_roi_pool": MultiScaleShapeAwareRoIAlign(names, 7, 2),
        "mask_roi_pool": MultiScaleShapeAwareRoIAlign(names, 14, 2),
    }


def _weights_enum(weights: WeightsLike, enum: type[WeightsEnum] | None, what: str) -> WeightsEnum | None:
    """A torchvision weights enum from itself or its name (``"COCO_V1"``, ``"DEFAULT"``, ``"Enum.NAME"``)."""
    if weights is None or isinstance(weights, WeightsEnum):
        return weights
    if Path(str(weights)).suffix in (".pth", ".pt", ".ckpt") or "/" in str(weights):
        raise ValueError(f"{what}={str(weights)!r}: no such checkpoint file")
    if enum is None:
        raise ValueError(f"{what}={weights!r}: torchvision has no such weights for this backbone")
    try:
        return enum.verify(str(weights).split(".")[-1])
    except (KeyError, ValueError) as e:
        names = ", ".join(w.name for w in enum)
        raise ValueError(f"{what}={weights!r} is neither a file nor one of {enum.__name__}: {names}") from e


def load_base_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Model weights from a checkpoint file: a bare ``state_dict`` or an mrrcnn checkpoint's ``"model"``."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"base_weights={str(path)!r} is not a readable PyTorch checkpoint: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"base_weights={str(path)!r} holds no model state_dict")
    return state


def _load_base(
    model: MaskRCNN, base_weights: WeightsLike, enum: type[WeightsEnum] | None, progress: bool
) -> None:
    """Load a Mask R-CNN's weights into ``model``; only a refining module's own weights may be missing."""
    if base_weights is None:
        return
    if isinstance(base_weights, (str, Path)) and Path(base_weights).is_file():
        state = load_base_state_dict(base_weights)
    else:
        weights = _weights_enum(base_weights, enum, "base_weights")
        state = weights.get_state_dict(progress=progress, check_hash=True)
        if weights == MaskRCNN_ResNet50_FPN_Weights.COCO_V1:
            zero_frozen_batch_norm_eps(model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    refining = getattr(model.roi_heads, "refining_parameter_prefixes", ())
    missing = [k for k in missing if not k.startswith(refining)]
    if missing or unexpected:
        raise ValueError(
            f"base_weights={str(base_weights)!r} does not fit this model: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )


def _build_fpn(
    trunk: str,
    refining: bool,
    *,
    base_weights: WeightsLike = None,
    weights_backbone: WeightsLike = None,
    num_classes: int | None = None,
    trainable_backbone_layers: int | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> MaskRCNN:
    backbone_enum, coco_enum = _TRUNKS[trunk]
    from_file = isinstance(base_weights, (str, Path)) and Path(base_weights).is_file()
    coco = (
        None if base_weights is None or from_file else _weights_enum(base_weights, coco_enum, "base_weights")
    )
    if coco is not None:
        weights_backbone = None
        num_classes = num_classes or len(coco.meta["categories"])
        if num_classes != len(coco.meta["categories"]):
            raise ValueError(
                f"num_classes={num_classes}, but base_weights={coco} has {len(coco.meta['categories'])}"
            )
    weights_backbone = _weights_enum(weights_backbone, backbone_enum, "weights_backbone")
    is_trained = base_weights is not None or weights_backbone is not None
    if trainable_backbone_layers is None:
        trainable_backbone_layers = 3 if is_trained else 5
    norm_layer = misc_nn_ops.FrozenBatchNorm2d if is_trained else nn.BatchNorm2d
    backbone = resnet_fpn_backbone(
        backbone_name=trunk,
        weights=weights_backbone,
        norm_layer=norm_layer,
        trainable_layers=trainable_backbone_layers,
    )
    model_class = MaskRefiningRCNN if refining else MaskRCNN
    model = model_class(backbone, num_classes=num_classes or 91, **{**_fast_poolers(), **kwargs})
    _load_base(model, base_weights, coco_enum, progress)
    if refining:
        model.init_refining_from_base()
    return _channels_last_heads(model)


def _build_small(
    refining: bool,
    *,
    num_classes: int,
    base_weights: None | str | Path = None,
    channels: int = 64,
    mask_channels: int = 32,
    representation_size: int = 256,
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256),
    **kwargs: Any,
) -> MaskRCNN:
    """A Mask R-CNN small enough to train from scratch on CPU: torchvision's ResNet with one BasicBlock per
    stage (a "ResNet-10"), a ``channels``-wide FPN, a ``mask_channels``-wide mask head (the mask heads are
    most of the heads' arithmetic, and MR R-CNN runs two), anchors sized for ~160-pixel images."""
    trunk = resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1])
    backbone = BackboneWithFPN(
        trunk,
        return_layers={f"layer{i}": str(i - 1) for i in range(1, 5)},
        in_channels_list=[64, 128, 256, 512],
        out_channels=channels,
        extra_blocks=LastLevelMaxPool(),
    )
    defaults = dict(
        min_size=160,
        max_size=160,
        rpn_anchor_generator=AnchorGenerator(
            tuple((s,) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * len(anchor_sizes)
        ),
        box_head=TwoMLPHead(channels * 7 * 7, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        mask_head=MaskRCNNHeads(channels, [mask_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes),
        **_fast_poolers(),
    )
    model_class = MaskRefiningRCNN if refining else MaskRCNN
    model = model_class(backbone, **{**defaults, **kwargs})
    _load_base(model, base_weights, None, progress=False)
    if refining:
        model.init_refining_from_base()
    return _channels_last_heads(model)


def mrrcnn_resnet50_fpn(**kwargs: Any) -> MaskRefiningRCNN:
    """MR R-CNN with ResNet-50-FPN. ``base_weights``: None, ``"COCO_V1"`` (torchvision's pretrained Mask
    R-CNN, the paper's starting point) or a Mask R-CNN checkpoint path; ``weights_backbone``: ImageNet
    weights when ``base_weights`` is None. Other keyword arguments go to :class:`MaskRefiningRCNN`."""
    return _build_fpn("resnet50", True, **kwargs)


def mrrcnn_resnet101_fpn(**kwargs: Any) -> MaskRefiningRCNN:
    """MR R-CNN with ResNet-101-FPN; torchvision has no COCO Mask R-CNN of it: ``base_weights`` is a path."""
    return _build_fpn("resnet101", True, **kwargs)


def mrrcnn_resnext101_32x8d_fpn(**kwargs: Any) -> MaskRefiningRCNN:
    """MR R-CNN with ResNeXt-101-32x8d-FPN; ``base_weights`` is a Mask R-CNN checkpoint path or None."""
    return _build_fpn("resnext101_32x8d", True, **kwargs)


def mrrcnn_small(**kwargs: Any) -> MaskRefiningRCNN:
    """MR R-CNN on the small CPU backbone (see :func:`maskrcnn_small`)."""
    return _build_small(True, **kwargs)


def maskrcnn_resnet50_fpn(**kwargs: Any) -> MaskRCNN:
    """The Mask R-CNN control of :func:`mrrcnn_resnet50_fpn` (torchvision's ``MaskRCNN``)."""
    return _build_fpn("resnet50", False, **kwargs)


def maskrcnn_resnet101_fpn(**kwargs: Any) -> MaskRCNN:
    """The Mask R-CNN control of :func:`mrrcnn_resnet101_fpn`."""
    return _build_fpn("resnet101", False, **kwargs)


def maskrcnn_resnext101_32x8d_fpn(**kwargs: Any) -> MaskRCNN:
    """The Mask R-CNN control of :func:`mrrcnn_resnext101_32x8d_fpn`."""
    return _build_fpn("resnext101_32x8d", False, **kwargs)


def maskrcnn_small(**kwargs: Any) -> MaskRCNN:
    """A small Mask R-CNN that trains from scratch on CPU (``num_classes`` required)."""
    return _build_small(False, **kwargs)


MODELS: dict[str, Callable[..., MaskRCNN]] = {
    fn.__name__: fn
    for fn in (
        mrrcnn_resnet50_fpn,
        mrrcnn_resnet101_fpn,
        mrrcnn_resnext101_32x8d_fpn,
        mrrcnn_small,
        maskrcnn_resnet50_fpn,
        maskrcnn_resnet101_fpn,
        maskrcnn_resnext101_32x8d_fpn,
        maskrcnn_small,
    )
}


def build_model(name: str, resize: str = "min_max", scale: float = 1.0, **kwargs: Any) -> MaskRCNN:
    """Build the model ``name`` (a key of :data:`MODELS`) with the builder's keyword arguments.

    Args:
        resize: ``min_max``, torchvision's resizing (shorter side to ``min_size``, longer at most
            ``max_size``), or ``scale``: every image times ``scale`` (:class:`~mrrcnn.models.transform.ScaleTransform`),
            where ``min_size`` and ``max_size`` do not apply.
        scale: the factor of ``scale`` mode.
    """
    if name not in MODELS:
        raise ValueError(f"model name {name!r} is not one of {', '.join(MODELS)}")
    model = MODELS[name](**kwargs)
    if resize == "scale":
        old = model.transform
        model.transform = ScaleTransform(scale, old.image_mean, old.image_std, old.size_divisible)
    elif resize != "min_max":
        raise ValueError(f"model.resize must be min_max or scale, got {resize!r}")
    return model
