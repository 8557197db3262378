"""RoI heads of MR R-CNN: torchvision's Mask R-CNN heads (stage 1) followed by the refining module.

Paper sections 3.2-3.3. Stage 1 is torchvision's ``RoIHeads``, unchanged in what it computes and trains.
The refining module takes stage 1's boxes ``B`` and mask probabilities ``P``:

* refining box head: ``SaRoIAlign(B, P, F)`` -> box head architecture -> logits ``S^r``, refined box ``B^r``;
* refining mask head (eq. 6): ``F^r = RoIAlign(B^r, F) + conv1x1(mask_head(RoIAlign(B, F)))`` -> mask
  head and predictor architecture -> ``P^r``;
* at inference ``S = (S^b + alpha * S^r) / (1 + alpha)`` on the pre-softmax logits of the same detection.

The choices the paper leaves open are in docs/method.md, each with its reason.

The evaluation path (``forward`` in eval mode, ``stage1_predict``, ``refine_predict``) is TorchScript and
traceable, so the model exports (:mod:`mrrcnn.engine.export`); training and the ``sara_masks="ground_truth"``
diagnostic stay eager-only (``@torch.jit.unused``). No ``from __future__ import annotations`` here:
TorchScript reads the signatures of unused methods and the fields of ``RefiningInput`` at run time.
"""

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, project_masks_on_boxes
from torchvision.ops import boxes as box_ops

from ..ops import MultiScaleShapeAwareRoIAlign, roi_align
from ..ops.exportable import exporting
from .sara_weights import WEIGHTINGS, neighbour_claim


def fuse_scores(stage1_logits: Tensor, refine_logits: Tensor, alpha: float) -> Tensor:
    """The paper's score fusion ``S = (S^b + alpha * S^r) / (1 + alpha)``, on pre-softmax logits.

    Args:
        stage1_logits, refine_logits: ``Tensor[N, num_classes]`` logits of the same N detections.
        alpha: weight of the refining head (``alpha = 0``: stage 1 alone).
    """
    return (stage1_logits + alpha * refine_logits) / (1.0 + alpha)


def refining_classes(labels: Tensor, class_logits: Tensor) -> Tensor:
    """The class whose box and mask feed the refining module, for each sampled RoI (training).

    A foreground RoI keeps its ground-truth class; a background RoI gets the pseudo label of paper 3.3,
    its highest-scoring foreground class.

    Args:
        labels: ``Int64Tensor[N]`` stage-1 targets, 0 for background.
        class_logits: ``Tensor[N, num_classes]`` stage-1 logits (column 0 is background).
    """
    pseudo = class_logits[:, 1:].argmax(dim=1) + 1
    return torch.where(labels > 0, labels, pseudo)


SARA_MASKS = ("predicted", "ground_truth", "ground_truth_others")


class RefiningInput(NamedTuple):
    """What stage 1 hands the refining module, for N boxes over the batch.

    ``boxes``: one ``Tensor[N_i, 4]`` per image (stage-1 boxes ``B``, resized-image pixels); ``classes``:
    ``Int64Tensor[N]`` (the class each box and mask was predicted for); ``mask_features``: ``Tensor[N, C,
    M/2, M/2]`` (stage 1's mask-head features on ``B``, eq. 6's input); ``probabilities``: ``Tensor[N, M,
    M]`` (stage 1's mask ``P`` of that class, covering its box).
    """

    boxes: list[Tensor]
    classes: Tensor
    mask_features: Tensor
    probabilities: Tensor


def ground_truth_masks_in_boxes(
    boxes: list[Tensor], targets: list[dict[str, Tensor]], size: tuple[int, int], others: bool = False
) -> Tensor:
    """Each box's best-IoU ground-truth mask, resampled into the box frame as Mask R-CNN's mask targets are.

    Args:
        boxes: one ``Tensor[N_i, 4]`` per image (x1, y1, x2, y2, pixels of the image the targets are in).
        targets: per image ``boxes: Tensor[G_i, 4]`` and ``masks: UInt8Tensor[G_i, H, W]`` (0/1).
        size: (Hp, Wp) of the output masks.
        others: instead, 1 minus the union of the *other* instances' masks: the neighbours removed, the
            instance's own shape not shown.

    Returns:
        ``Tensor[N, Hp, Wp]`` in [0, 1]: RoIAlign of the mask over the box (torchvision's
        ``project_masks_on_boxes``), so a pixel holds the instance's share of its cell; zeros for images
        without ground truth (ones with ``others``). A box overlapping no ground-truth box reads a mask
        outside it: zeros too.
    """
    out = []
    for boxes_i, target in zip(boxes, targets):
        gt_boxes, gt_masks = target["boxes"].to(boxes_i.dtype), target["masks"].to(boxes_i.dtype)
        if gt_boxes.shape[0] == 0:
            out.append(boxes_i.new_full((boxes_i.shape[0], *size), float(others)))
            continue
        if others:
            gt_masks = (gt_masks.sum(dim=0, keepdim=True) - gt_masks > 0).to(boxes_i.dtype)
        matched = box_ops.box_iou(boxes_i, gt_boxes).argmax(dim=1)
        rois = torch.cat([matched[:, None].to(boxes_i.dtype), boxes_i], dim=1)
        resampled = roi_align(gt_masks[:, None], rois, size, 1.0)[:, 0]
        out.append(1 - resampled if others else resampled)
    return torch.cat(out)


def mask_loss(
    mask_logits: Tensor,
    proposals: list[Tensor],
    gt_masks: list[Tensor],
    gt_labels: list[Tensor],
    matched_idxs: list[Tensor],
) -> Tensor:
    """torchvision's ``maskrcnn_loss``, bit for bit, without its Python branch on an empty foreground.

    The mean binary cross-entropy of each foreground RoI's mask logits ``Tensor[N, K, M, M]`` for its
    ground-truth class against that instance's mask (``gt_masks``: one ``Tensor[G_i, H, W]`` per image)
    projected into its box (``proposals``: one ``Tensor[N_i, 4]`` per image; ``matched_idxs``: the
    ground truth of each). Zero, with zero gradients, when ``N = 0``. torchvision branches on
    ``numel() == 0``, which ``torch.compile`` cannot decide for a data-dependent ``N`` (a graph break at
    each of the refining module's two mask losses); here a tensor decides."""
    labels = torch.cat([gt[i] for gt, i in zip(gt_labels, matched_idxs)])
    targets = torch.cat(
        [
            project_masks_on_boxes(m, p, i, mask_logits.shape[-1])
            for m, p, i in zip(gt_masks, proposals, matched_idxs)
        ]
    )
    loss = F.binary_cross_entropy_with_logits(_select_class(mask_logits, labels), targets)
    # The mean over no RoI is NaN; torch.where's gradient for the branch it drops is zero.
    return torch.where((labels >= 0).any(), loss, loss.new_zeros(()))


def _select_class(per_class: Tensor, classes: Tensor) -> Tensor:
    """``per_class[i, classes[i]]`` for ``per_class: Tensor[N, num_classes, ...]``."""
    return per_class[torch.arange(classes.shape[0], device=classes.device), classes]


def _channels_last(features: dict[str, Tensor]) -> dict[str, Tensor]:
    """The maps in channels-last layout, which the eager (Shape-aware) RoIAlign reads without a copy."""
    return {k: v.contiguous(memory_format=torch.channels_last) for k, v in features.items()}


class MaskRefiningRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` (with masks) plus the refining module.

    Args:
        *args, **kwargs: those of ``RoIHeads``; ``mask_roi_pool``, ``mask_head`` and ``mask_predictor`` are
            required.
        alpha: weight of the refined logits in the score fusion; may be changed after training.
        shape_aware: pool the refining box head's features with Shape-aware RoIAlign (False: plain
            RoIAlign, the paper's "RM without SARA").
        refine_cls: use (and train) the refined classification; False keeps stage 1's scores.
        refine_reg: use (and train) the refined box regression; False keeps stage 1's boxes.
        sara_masks: what Shape-aware RoIAlign weights by: ``"predicted"`` (stage 1's masks, the method);
            or diagnostics that tell whether shape-aware pooling *can* help on a data set, in training and
            at evaluation (which then needs the targets): ``"ground_truth"``, each box's best-IoU
            ground-truth mask, and ``"ground_truth_others"``, 1 minus the other instances' masks (the
            neighbours removed, the instance's own shape not shown). Not a way to report results; may be
            changed after training.
        sara_weighting: how the predicted masks weight a box's samples (:mod:`mrrcnn.models.sara_weights`):
            ``"own"`` (the paper: the instance's stage-1 mask), ``"others"`` (1 minus the highest mask of
            another instance: stage 1's other detections), ``"ownership"`` (their product) or
            ``"iterative"`` (the refining mask head's mask on the stage-1 box). May be changed after
            training.
    """

    refining_parameter_prefixes = (
        "roi_heads.refine_box_head.",
        "roi_heads.refine_box_predictor.",
        "roi_heads.mask_flow.",
        "roi_heads.refine_mask_head.",
        "roi_heads.refine_mask_predictor.",
    )

    def __init__(
        self,
        *args,
        alpha: float = 1.0,
        shape_aware: bool = True,
        refine_cls: bool = True,
        refine_reg: bool = True,
        sara_masks: str = "predicted",
        sara_weighting: str = "own",
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not self.has_mask():
            raise ValueError("MaskRefiningRoIHeads needs mask_roi_pool, mask_head and mask_predictor")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        # A float even when given an int, so that a scripted model takes any alpha (roi_heads.alpha = 0.5).
        self.alpha = float(alpha)
        self.shape_aware = shape_aware
        self.refine_cls = refine_cls
        self.refine_reg = refine_reg
        if sara_masks not in SARA_MASKS:
            raise ValueError(f"sara_masks must be one of {SARA_MASKS}, got {sara_masks!r}")
        if sara_weighting not in WEIGHTINGS:
            raise ValueError(f"sara_weighting must be one of {WEIGHTINGS}, got {sara_weighting!r}")
        if sara_weighting != "own" and not (shape_aware and sara_masks == "predicted"):
            raise ValueError(
                f"sara_weighting={sara_weighting!r} weights Shape-aware RoIAlign by predicted masks: it needs "
                f"shape_aware=True and sara_masks='predicted' (got {shape_aware}, {sara_masks!r})"
            )
        self.sara_masks = sara_masks
        self.sara_weighting = sara_weighting
        pool = self.box_roi_pool
        self.refine_box_roi_pool = MultiScaleShapeAwareRoIAlign(
            pool.featmap_names,
            pool.output_size,
            pool.sampling_ratio,
            canonical_scale=pool.canonical_scale,
            canonical_level=pool.canonical_level,
        )
        self.refine_box_head = copy.deepcopy(self.box_head)
        self.refine_box_predictor = copy.deepcopy(self.box_predictor)
        mask_channels = [m for m in self.mask_head.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        pooled_channels = next(m for m in self.mask_head.modules() if isinstance(m, nn.Conv2d)).in_channels
        # Zero-initialised so that, initialised from stage 1, the refining mask head starts as stage 1's.
        self.mask_flow = nn.Conv2d(mask_channels, pooled_channels, kernel_size=1)
        nn.init.zeros_(self.mask_flow.weight)
        nn.init.zeros_(self.mask_flow.bias)
        self.refine_mask_head = copy.deepcopy(self.mask_head)
        self.refine_mask_predictor = copy.deepcopy(self.mask_predictor)

    @torch.no_grad()
    def init_refining_from_base(self) -> None:
        """Copy stage 1's box head, box predictor, mask head and mask predictor into the refining heads."""
        for base, refining in (
            (self.box_head, self.refine_box_head),
            (self.box_predictor, self.refine_box_predictor),
            (self.mask_head, self.refine_mask_head),
            (self.mask_predictor, self.refine_mask_predictor),
        ):
            refining.load_state_dict(base.state_dict())

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Stage 1 and the refining module.

        Args:
            features: FPN maps ``Tensor[B, C, H_l, W_l]`` by name.
            proposals: one ``Tensor[P_i, 4]`` per image (x1, y1, x2, y2, resized-image pixels).
            image_shapes: (height, width) of each resized image.
            targets: torchvision's per-image dicts with ``boxes``, ``labels``, ``masks``: required in
                training, and at evaluation when ``sara_masks`` reads the ground truth.

        Returns:
            Training: ``({}, losses)`` with torchvision's three head losses plus ``loss_refine_classifier``
            (when ``refine_cls``), ``loss_refine_box_reg`` (when ``refine_reg``) and ``loss_refine_mask``.
            Eval: per image ``boxes: Tensor[D, 4]``, ``labels: Int64Tensor[D]``, ``scores: Tensor[D]``,
            ``masks: Tensor[D, 1, M, M]`` (probabilities in the box frame), and ``{}``.
        """
        if not exporting():
            # All four poolings read the same maps: make them channels-last once. (Exported pooling is
            # torchvision's RoIAlign, which has no use for it.)
            features = _channels_last(features)
        if self.training:
            return self._train_forward(features, proposals, image_shapes, targets)
        if self.sara_masks != "predicted" and targets is None:
            # Concatenated, not an f-string: TorchScript compiles this method.
            raise ValueError(
                "sara_masks="
                + self.sara_masks
                + " (a diagnostic) reads the ground-truth masks: pass targets at "
                "evaluation too"
            )
        refining_input, stage1_logits, stage1_scores = self.stage1_predict(features, proposals, image_shapes)
        detections = self.refine_predict(
            features, refining_input, stage1_logits, stage1_scores, image_shapes, targets
        )
        no_losses: dict[str, Tensor] = {}
        return detections, no_losses

    @torch.jit.unused
    def _train_forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Training: ``([], losses)`` (see :meth:`forward`)."""
        self.check_targets(targets)
        losses, boxes, classes = self.stage1_loss(features, proposals, image_shapes, targets)
        detections = None
        # The weightings that read the other instances (only with SARA on predicted masks).
        if (
            self.shape_aware
            and self.sara_masks == "predicted"
            and self.sara_weighting in ("others", "ownership")
        ):
            detections = self._stage1_detection_masks(features, proposals, image_shapes)
        losses.update(self.refine_loss(features, boxes, classes, image_shapes, targets, detections))
        return [], losses

    def stage1_loss(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> tuple[dict[str, Tensor], list[Tensor], Tensor]:
        """Stage 1 in training: torchvision's Mask R-CNN heads and their three losses, and for every sampled
        RoI the refining module's input: its stage-1 box (one ``Tensor[N_i, 4]`` per image) and its
        (pseudo) class (``Int64Tensor[N]``).

        Stage 1's outputs are inputs of the refining module, not trained through: stage 1 keeps exactly
        Mask R-CNN's objective.
        """
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = self.box_predictor(
            self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        )
        loss_classifier, loss_box_reg = fastrcnn_loss(
            class_logits, box_regression, labels, regression_targets
        )
        positive = [torch.where(lab > 0)[0] for lab in labels]
        mask_proposals = [p[i] for p, i in zip(proposals, positive)]
        mask_logits = self.mask_predictor(
            self.mask_head(self.mask_roi_pool(features, mask_proposals, image_shapes))
        )
        loss_mask = mask_loss(
            mask_logits,
            mask_proposals,
            [t["masks"] for t in targets],
            [t["labels"] for t in targets],
            [m[i] for m, i in zip(matched_idxs, positive)],
        )
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg, "loss_mask": loss_mask}
        counts = [p.shape[0] for p in proposals]
        with torch.no_grad():
            classes = refining_classes(torch.cat(labels), class_logits)
            boxes = self._decode(box_regression, torch.cat(proposals), classes, image_shapes, counts)
        return losses, boxes, classes

    def refine_loss(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        classes: Tensor,
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
        detections: tuple[list[Tensor], list[Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        """The refining module in training on stage 1's boxes and classes (:meth:`stage1_loss`): targets
        re-assigned to the boxes, the refining box head's losses (those its switches keep) and the refining
        mask head's loss on the refined boxes. ``detections``: the other instances, for the weightings
        that read them (:meth:`_stage1_detection_masks`)."""
        matched, labels, regression_targets = self.assign_refining_targets(boxes, targets)
        mask_features, masks = self._training_stage1_masks(
            features, boxes, classes, labels, image_shapes, targets, detections
        )
        logits, deltas = self._refine_boxes(features, boxes, masks, image_shapes)
        loss_classifier, loss_box_reg = fastrcnn_loss(logits, deltas, labels, regression_targets)
        losses = {}
        if self.refine_cls:
            losses["loss_refine_classifier"] = loss_classifier
        if self.refine_reg:
            losses["loss_refine_box_reg"] = loss_box_reg

        labels_all = torch.cat(labels)
        positive = torch.where(labels_all > 0)[0]
        if self.refine_reg:
            refined = self._decode(
                deltas.detach()[positive],
                torch.cat(boxes)[positive],
                labels_all[positive],
                image_shapes,
                [int((lab > 0).sum()) for lab in labels],
            )
        else:
            refined = [b[lab > 0] for b, lab in zip(boxes, labels)]
        mask_logits = self._refine_masks(features, refined, mask_features, image_shapes)
        losses["loss_refine_mask"] = mask_loss(
            mask_logits,
            refined,
            [t["masks"] for t in targets],
            [t["labels"] for t in targets],
            [m[lab > 0] for m, lab in zip(matched, labels)],
        )
        return losses

    def stage1_predict(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[RefiningInput, Tensor, Tensor]:
        """Stage 1 at inference: torchvision's Mask R-CNN detections (boxes, classes, stage-1 masks and mask
        features) as the refining module's input, their pre-softmax logits ``S^b`` (``Tensor[D,
        num_classes]``, the rows of the proposals they came from) and their scores ``Tensor[D]``."""
        class_logits, box_regression = self.box_predictor(
            self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        )
        boxes, scores, labels, source = self.stage1_detections(
            class_logits, box_regression, proposals, image_shapes
        )
        classes = torch.cat(labels)
        mask_features, probabilities = self._stage1_masks(features, boxes, classes, image_shapes)
        refining_input = RefiningInput(boxes, classes, mask_features, probabilities)
        return refining_input, class_logits[torch.cat(source)], torch.cat(scores)

    def refine_predict(
        self,
        features: dict[str, Tensor],
        refining_input: RefiningInput,
        stage1_logits: Tensor,
        stage1_scores: Tensor,
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> list[dict[str, Tensor]]:
        """The refining module at inference: fused scores (stage 1's without ``refine_cls``), refined boxes
        (stage 1's without ``refine_reg``), score threshold and NMS again, refined masks."""
        boxes, classes = refining_input.boxes, refining_input.classes
        counts = [b.shape[0] for b in boxes]
        masks = self._sara_masks(features, refining_input, image_shapes, targets, None)
        refine_logits, refine_deltas = self._refine_boxes(features, boxes, masks, image_shapes)
        if self.refine_cls:
            scores = _select_class(
                F.softmax(fuse_scores(stage1_logits, refine_logits, self.alpha), -1), classes
            )
        else:
            scores = stage1_scores
        if self.refine_reg:
            refined = self._decode(refine_deltas, torch.cat(boxes), classes, image_shapes, counts)
        else:
            refined = boxes

        results: list[dict[str, Tensor]] = []
        kept: list[Tensor] = []
        offset = 0
        for boxes_i, scores_i, labels_i in zip(refined, scores.split(counts), classes.split(counts)):
            keep = torch.where(scores_i > self.score_thresh)[0]
            keep = keep[box_ops.remove_small_boxes(boxes_i[keep], min_size=1e-2)]
            keep = keep[box_ops.batched_nms(boxes_i[keep], scores_i[keep], labels_i[keep], self.nms_thresh)]
            keep = keep[: self.detections_per_img]
            results.append({"boxes": boxes_i[keep], "labels": labels_i[keep], "scores": scores_i[keep]})
            kept.append(keep + offset)
            offset += boxes_i.shape[0]
        keep_all = torch.cat(kept)
        mask_logits = self._refine_masks(
            features, [r["boxes"] for r in results], refining_input.mask_features[keep_all], image_shapes
        )
        masks = _select_class(mask_logits, classes[keep_all]).sigmoid()[:, None]
        for result, masks_i in zip(results, masks.split([r["boxes"].shape[0] for r in results])):
            result["masks"] = masks_i
        return results

    @torch.jit.unused
    @torch.no_grad()
    def _training_stage1_masks(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        classes: Tensor,
        labels: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
        detections: tuple[list[Tensor], list[Tensor]] | None,
    ) -> tuple[Tensor, Tensor | None]:
        """Stage 1's mask head where the refining module reads it in training: eq. 6's features
        ``Tensor[F, C, M/2, M/2]`` of the ``F`` foreground RoIs (``labels`` > 0), and the masks Shape-aware
        RoIAlign weights every RoI by (None without SARA). Without SARA it runs on the foreground only."""
        foreground = [lab > 0 for lab in labels]
        if not self.shape_aware:
            foreground_boxes = [b[f] for b, f in zip(boxes, foreground)]
            return self.mask_head(self.mask_roi_pool(features, foreground_boxes, image_shapes)), None
        mask_features, probabilities = self._stage1_masks(features, boxes, classes, image_shapes)
        refining_input = RefiningInput(boxes, classes, mask_features, probabilities)
        masks = self._sara_masks(features, refining_input, image_shapes, targets, detections)
        return mask_features[torch.cat(foreground)], masks

    @torch.jit.unused
    @torch.no_grad()
    def _stage1_detection_masks(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The other instances in training, for the weightings that read them: stage 1's detections from
        all of the step's proposals, as at inference (score threshold, NMS, ``detections_per_img``), and
        their stage-1 masks; per image ``Tensor[D_i, 4]`` boxes and ``Tensor[D_i, M, M]`` probabilities."""
        class_logits, box_regression = self.box_predictor(
            self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        )
        boxes, _, labels, _ = self.stage1_detections(class_logits, box_regression, proposals, image_shapes)
        _, probabilities = self._stage1_masks(features, boxes, torch.cat(labels), image_shapes)
        return boxes, list(probabilities.split([b.shape[0] for b in boxes]))

    def _sara_masks(
        self,
        features: dict[str, Tensor],
        refining_input: RefiningInput,
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None,
        detections: tuple[list[Tensor], list[Tensor]] | None,
    ) -> Tensor | None:
        """The masks Shape-aware RoIAlign weights the refining box head's features by, ``Tensor[N, M, M]``:
        None without SARA; by ``sara_weighting`` from stage 1's probabilities and, for the weightings that
        read the other instances, the masks of ``detections`` (per image ``Tensor[D_i, 4]`` boxes and
        ``Tensor[D_i, M, M]`` probabilities; None: the RoIs themselves, stage 1's detections at
        inference); or (the diagnostics ``sara_masks``) the ground truth."""
        if not self.shape_aware:
            return None
        if self.sara_masks != "predicted":
            return self._ground_truth_masks(refining_input, targets)
        own = refining_input.probabilities
        if self.sara_weighting == "own":
            return own
        if self.sara_weighting == "iterative":
            logits = self._refine_masks(
                features, refining_input.boxes, refining_input.mask_features, image_shapes
            )
            return _select_class(logits, refining_input.classes).sigmoid()
        boxes = refining_input.boxes
        if detections is None:
            detections = (boxes, list(own.split([b.shape[0] for b in boxes])))
        claims: list[Tensor] = []
        for boxes_i, other_boxes, other_masks in zip(boxes, detections[0], detections[1]):
            claims.append(neighbour_claim(boxes_i, other_boxes, other_masks))
        free = 1.0 - torch.cat(claims)
        return free if self.sara_weighting == "others" else own * free

    @torch.jit.unused
    def _ground_truth_masks(
        self, refining_input: RefiningInput, targets: list[dict[str, Tensor]] | None
    ) -> Tensor:
        """The diagnostic's masks: each box's best-IoU ground-truth mask (eager only: it reads targets)."""
        size = refining_input.probabilities.shape[-2:]
        others = self.sara_masks == "ground_truth_others"
        return ground_truth_masks_in_boxes(refining_input.boxes, targets, size, others)

    def _stage1_masks(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        classes: Tensor,
        image_shapes: list[tuple[int, int]],
    ) -> tuple[Tensor, Tensor]:
        """Stage 1's mask head on ``boxes``: its conv features ``Tensor[N, C, M/2, M/2]`` (the input of the
        mask flow) and the mask probabilities ``Tensor[N, M, M]`` of ``classes``."""
        mask_features = self.mask_head(self.mask_roi_pool(features, boxes, image_shapes))
        probabilities = _select_class(self.mask_predictor(mask_features), classes).sigmoid()
        return mask_features, probabilities

    def _refine_boxes(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        masks: Tensor | None,
        image_shapes: list[tuple[int, int]],
    ) -> tuple[Tensor, Tensor]:
        """Refining box head on ``SaRoIAlign(B, masks, F)`` (plain RoIAlign when ``masks`` is None): logits
        ``Tensor[N, num_classes]`` and deltas ``Tensor[N, num_classes * 4]``."""
        pooled = self.refine_box_roi_pool(features, boxes, image_shapes, masks)
        return self.refine_box_predictor(self.refine_box_head(pooled))

    def _refine_masks(
        self,
        features: dict[str, Tensor],
        refined_boxes: list[Tensor],
        stage1_mask_features: Tensor,
        image_shapes: list[tuple[int, int]],
    ) -> Tensor:
        """Refining mask head on eq. 6's ``RoIAlign(B^r, F) + F^-``: logits ``Tensor[N, num_classes, M, M]``."""
        pooled = self.mask_roi_pool(features, refined_boxes, image_shapes) + self.mask_flow(
            stage1_mask_features
        )
        return self.refine_mask_predictor(self.refine_mask_head(pooled))

    def _decode(
        self,
        deltas: Tensor,
        boxes: Tensor,
        classes: Tensor,
        image_shapes: list[tuple[int, int]],
        counts: list[int],
    ) -> list[Tensor]:
        """Boxes ``boxes`` moved by the class-``classes`` column of ``deltas``, clipped, split per image."""
        decoded = self.box_coder.decode_single(deltas, boxes).view(boxes.shape[0], deltas.shape[1] // 4, 4)
        decoded = _select_class(decoded, classes)
        clipped: list[Tensor] = []
        for b, shape in zip(decoded.split(counts), image_shapes):
            clipped.append(box_ops.clip_boxes_to_image(b, shape))
        return clipped

    def assign_refining_targets(
        self, boxes: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Targets of the refining box head, re-assigned by IoU of its input boxes with the ground truth, as
        a cascade stage does (same matcher thresholds and box coder as stage 1).

        Args:
            boxes: per image ``Tensor[N_i, 4]``, the stage-1 boxes fed to the refining module.
            targets: per image dicts with ``boxes: Tensor[G_i, 4]`` and ``labels: Int64Tensor[G_i]``.

        Returns:
            Per image: ``matched_idxs: Int64Tensor[N_i]`` (ground-truth index, 0 where unmatched),
            ``labels: Int64Tensor[N_i]`` (0 for background), ``regression_targets: Tensor[N_i, 4]``.
        """
        gt_boxes = [t["boxes"].to(boxes[0].dtype) for t in targets]
        for b, gt in zip(boxes, gt_boxes):
            if gt.numel():
                # torchvision's matcher raises this for an image with ground truth and no sampled RoI; said
                # here first so that torch.compile can decide the matcher's branch on an empty image.
                torch._check_value(
                    b.shape[0] > 0,
                    lambda: "No proposal boxes available for one of the images during training",
                )
        matched_idxs, labels = self.assign_targets_to_proposals(
            boxes, gt_boxes, [t["labels"] for t in targets]
        )
        # Boxes between the matcher's thresholds (-1, only when fg and bg thresholds differ) are background:
        # the refining stage keeps every box it is given, as a cascade stage does.
        labels = [lab.clamp(min=0) for lab in labels]
        matched_gt_boxes = [
            (gt if gt.numel() else gt.new_zeros(1, 4))[matched] for gt, matched in zip(gt_boxes, matched_idxs)
        ]
        return matched_idxs, labels, self.box_coder.encode(matched_gt_boxes, boxes)

    def stage1_detections(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """torchvision's ``RoIHeads.postprocess_detections``, step for step, that also returns ``source``:
        for each detection the row of ``class_logits`` (its proposal) it came from, so that ``S^b`` can be
        fused with the refined logits of the same detection."""
        device = class_logits.device
        num_classes = class_logits.shape[-1]
        counts = [p.shape[0] for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals)
        pred_scores = F.softmax(class_logits, -1)
        rows = torch.arange(class_logits.shape[0], device=device)

        all_boxes: list[Tensor] = []
        all_scores: list[Tensor] = []
        all_labels: list[Tensor] = []
        all_source: list[Tensor] = []
        for boxes, scores, source, image_shape in zip(
            pred_boxes.split(counts), pred_scores.split(counts), rows.split(counts), image_shapes
        ):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            labels = torch.arange(num_classes, device=device).view(1, -1).expand_as(scores)
            source = source.view(-1, 1).expand_as(scores)
            boxes, scores, labels, source = boxes[:, 1:], scores[:, 1:], labels[:, 1:], source[:, 1:]
            boxes, scores, labels, source = (
                boxes.reshape(-1, 4),
                scores.reshape(-1),
                labels.reshape(-1),
                source.reshape(-1),
            )
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels, source = boxes[keep], scores[keep], labels[keep], source[keep]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels, source = boxes[keep], scores[keep], labels[keep], source[keep]
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
            all_source.append(source[keep])
        return all_boxes, all_scores, all_labels, all_source
