"""Mask Refining R-CNN: torchvision's ``MaskRCNN`` with the refining module in its RoI heads."""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.detection import MaskRCNN

from ..ops import MultiScaleShapeAwareRoIAlign
from .roi_heads import MaskRefiningRoIHeads


class MaskRefiningRCNN(MaskRCNN):
    """MR R-CNN (paper section 3): a Mask R-CNN whose RoI heads add the refining module.

    Takes every argument of ``torchvision.models.detection.MaskRCNN``, plus:

    Args:
        alpha: weight of the refined logits in ``S = (S^b + alpha * S^r) / (1 + alpha)``; can be changed
            on a trained model (``model.roi_heads.alpha``) without retraining.
        shape_aware: Shape-aware RoIAlign in the refining box head (False: plain RoIAlign, "RM w/o SARA").
        refine_cls: use the refined classification (False: stage 1's scores, refined boxes).
        refine_reg: use the refined boxes (False: stage 1's boxes, fused scores).
        sara_masks: ``"predicted"`` (the method), or the diagnostics ``"ground_truth"`` (Shape-aware
            RoIAlign reads each box's best-IoU ground-truth mask) and ``"ground_truth_others"`` (1 minus
            the other instances' masks), whose evaluation needs ``model(images, targets)``.
        sara_weighting: how predicted masks weight Shape-aware RoIAlign: ``"own"`` (the paper),
            ``"others"``, ``"ownership"`` or ``"iterative"`` (:mod:`mrrcnn.models.sara_weights`).

    Inputs and outputs are torchvision's: in training, ``model(images, targets)`` returns the losses
    (torchvision's five plus ``loss_refine_classifier``, ``loss_refine_box_reg``, ``loss_refine_mask``);
    in eval, ``model(images)`` returns per image ``boxes``, ``labels``, ``scores``, ``masks``. Its
    ``state_dict`` is a torchvision Mask R-CNN's plus the refining heads, so a Mask R-CNN's weights load
    with ``strict=False``; then call :meth:`init_refining_from_base` (paper 4.1).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        *,
        alpha: float = 1.0,
        shape_aware: bool = True,
        refine_cls: bool = True,
        refine_reg: bool = True,
        sara_masks: str = "predicted",
        sara_weighting: str = "own",
        **kwargs: Any,
    ) -> None:
        names = ["0", "1", "2", "3"]
        kwargs.setdefault("box_roi_pool", MultiScaleShapeAwareRoIAlign(names, 7, 2))
        kwargs.setdefault("mask_roi_pool", MultiScaleShapeAwareRoIAlign(names, 14, 2))
        super().__init__(backbone, num_classes, **kwargs)
        base = self.roi_heads
        self.roi_heads = MaskRefiningRoIHeads(
            base.box_roi_pool,
            base.box_head,
            base.box_predictor,
            base.proposal_matcher.high_threshold,
            base.proposal_matcher.low_threshold,
            base.fg_bg_sampler.batch_size_per_image,
            base.fg_bg_sampler.positive_fraction,
            base.box_coder.weights,
            base.score_thresh,
            base.nms_thresh,
            base.detections_per_img,
            mask_roi_pool=base.mask_roi_pool,
            mask_head=base.mask_head,
            mask_predictor=base.mask_predictor,
            alpha=alpha,
            shape_aware=shape_aware,
            refine_cls=refine_cls,
            refine_reg=refine_reg,
            sara_masks=sara_masks,
            sara_weighting=sara_weighting,
        )

    def init_refining_from_base(self) -> None:
        """Initialise the refining heads with stage 1's head weights (paper 4.1)."""
        self.roi_heads.init_refining_from_base()
