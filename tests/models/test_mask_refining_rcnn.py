import pytest
import torch
import torchvision
from torchvision.models.detection import MaskRCNN

from mrrcnn.models import MaskRefiningRCNN, maskrcnn_small, mrrcnn_resnet50_fpn, mrrcnn_small

REFINING_LOSSES = {"loss_refine_classifier", "loss_refine_box_reg", "loss_refine_mask"}
TORCHVISION_LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
SMALL = {"num_classes": 4, "min_size": 96, "max_size": 96}


def images_and_targets(empty_second=False):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 96, generator=g) for _ in range(2)]
    targets = []
    for i, boxes in enumerate([[[10, 10, 50, 40], [30, 20, 70, 60], [60, 60, 90, 90]], [[5, 50, 45, 90]]]):
        if empty_second and i == 1:
            boxes = []
        boxes = torch.tensor(boxes, dtype=torch.float32).view(-1, 4)
        masks = torch.zeros(len(boxes), 96, 96, dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
            m[y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes, "labels": torch.arange(len(boxes)) % 3 + 1, "masks": masks})
    return images, targets


def train_losses(model, seed=0, empty_second=False):
    torch.manual_seed(seed)
    model.train()
    return model(*images_and_targets(empty_second))


def test_training_returns_all_eight_finite_losses_whose_gradients_reach_the_refining_heads():
    model = mrrcnn_small(**SMALL)
    losses = train_losses(model)
    assert set(losses) == TORCHVISION_LOSSES | REFINING_LOSSES
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    heads = model.roi_heads
    for module in (
        heads.refine_box_head,
        heads.refine_box_predictor,
        heads.mask_flow,
        heads.refine_mask_head,
        heads.refine_mask_predictor,
    ):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_refining_losses_do_not_train_stage_one_heads():
    model = mrrcnn_small(**SMALL)
    losses = train_losses(model)
    sum(v for k, v in losses.items() if k in REFINING_LOSSES).backward()
    heads = model.roi_heads
    for module in (heads.box_head, heads.box_predictor, heads.mask_head, heads.mask_predictor):
        assert all(p.grad is None or not p.grad.any() for p in module.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.backbone.parameters())


@pytest.mark.parametrize(
    "switch, absent, changed",
    [
        # The classifier is simply not trained; nothing else moves.
        ({"refine_cls": False}, {"loss_refine_classifier"}, set()),
        # The refining mask head then learns on stage 1's boxes instead of the refined ones.
        ({"refine_reg": False}, {"loss_refine_box_reg"}, {"loss_refine_mask"}),
        # Other features for the refining box head, hence other refined boxes for its mask head too.
        ({"shape_aware": False}, set(), REFINING_LOSSES),
        # alpha only weighs scores at inference.
        ({"alpha": 0.3}, set(), set()),
    ],
)
def test_switches_change_only_what_they_should_in_training(switch, absent, changed):
    reference = mrrcnn_small(**SMALL)
    model = mrrcnn_small(**SMALL, **switch)
    model.load_state_dict(reference.state_dict())
    expected, actual = train_losses(reference), train_losses(model)
    assert set(actual) == set(expected) - absent
    for key in TORCHVISION_LOSSES:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)
    assert {k for k in actual if not torch.equal(actual[k], expected[k])} == changed


def test_shape_aware_switch_decides_whether_the_refining_box_pool_sees_masks():
    seen = []
    for shape_aware in (True, False):
        model = mrrcnn_small(**SMALL, shape_aware=shape_aware)
        pool = model.roi_heads.refine_box_roi_pool
        original = pool.forward
        pool.forward = lambda x, boxes, shapes, masks=None, f=original: (
            seen.append(masks) or f(x, boxes, shapes, masks)
        )
        train_losses(model)
    assert isinstance(seen[0], torch.Tensor) and seen[0].min() >= 0 and seen[0].max() <= 1
    assert seen[1] is None


def test_empty_images_in_training_and_eval():
    model = mrrcnn_small(**SMALL)
    losses = train_losses(model, empty_second=True)
    assert set(losses) == TORCHVISION_LOSSES | REFINING_LOSSES and all(
        torch.isfinite(v) for v in losses.values()
    )
    sum(losses.values()).backward()
    model.eval()
    model.roi_heads.score_thresh = 1.0  # no detection survives
    with torch.no_grad():
        outputs = model(images_and_targets()[0])
    for output in outputs:
        assert output["boxes"].shape == (0, 4) and output["masks"].shape == (0, 1, 96, 96)


EVAL_ALL = {
    "box_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
    "box_detections_per_img": 100000,
    "rpn_post_nms_top_n_test": 40,
}


@pytest.fixture(scope="module")
def eval_models():
    """Variants sharing one set of weights, keeping every stage-1 detection (no threshold, no NMS)."""
    torch.manual_seed(1)
    full = mrrcnn_small(**SMALL, **EVAL_ALL)
    # Make the refining box predictor differ from stage 1's so that every switch has something to change.
    torch.nn.init.normal_(full.roi_heads.refine_box_predictor.cls_score.weight, std=0.05)
    torch.nn.init.normal_(full.roi_heads.refine_box_predictor.bbox_pred.weight, std=0.01)
    state = full.state_dict()
    variants = {"full": full}
    for name, switch in {
        "no_cls": {"refine_cls": False},
        "no_reg": {"refine_reg": False},
        "no_sara": {"shape_aware": False},
        "stage1": {"alpha": 0.0, "refine_reg": False},
    }.items():
        variants[name] = mrrcnn_small(**SMALL, **EVAL_ALL, **switch)
        variants[name].load_state_dict(state)
    baseline = maskrcnn_small(**SMALL, **EVAL_ALL)
    assert not baseline.load_state_dict(state, strict=False).missing_keys
    variants["maskrcnn"] = baseline
    images = [images_and_targets()[0][0]]
    with torch.no_grad():
        return {name: m.eval()(images)[0] for name, m in variants.items()}


def sorted_rows(boxes):
    order = torch.from_numpy(__import__("numpy").lexsort(boxes.T.flip(0).numpy()))
    return boxes[order]


def test_alpha_zero_without_refined_boxes_is_mask_rcnn(eval_models):
    stage1, maskrcnn = eval_models["stage1"], eval_models["maskrcnn"]
    for key in ("boxes", "labels", "scores"):
        torch.testing.assert_close(stage1[key], maskrcnn[key], rtol=0, atol=1e-6)


def test_refine_cls_off_keeps_stage_one_scores_and_refined_boxes(eval_models):
    no_cls, full, maskrcnn = eval_models["no_cls"], eval_models["full"], eval_models["maskrcnn"]
    torch.testing.assert_close(no_cls["scores"].sort().values, maskrcnn["scores"].sort().values)
    torch.testing.assert_close(sorted_rows(no_cls["boxes"]), sorted_rows(full["boxes"]))
    assert not torch.allclose(sorted_rows(full["boxes"]), sorted_rows(maskrcnn["boxes"]))


def test_refine_reg_off_keeps_stage_one_boxes_and_fused_scores(eval_models):
    no_reg, full, maskrcnn = eval_models["no_reg"], eval_models["full"], eval_models["maskrcnn"]
    torch.testing.assert_close(sorted_rows(no_reg["boxes"]), sorted_rows(maskrcnn["boxes"]))
    torch.testing.assert_close(no_reg["scores"].sort().values, full["scores"].sort().values)
    assert not torch.allclose(full["scores"].sort().values, maskrcnn["scores"].sort().values)


def test_shape_aware_off_changes_only_the_refined_outputs(eval_models):
    no_sara, full = eval_models["no_sara"], eval_models["full"]
    assert no_sara["boxes"].shape == full["boxes"].shape
    assert not torch.allclose(sorted_rows(no_sara["boxes"]), sorted_rows(full["boxes"]))


def test_alpha_can_change_after_training():
    torch.manual_seed(2)
    model = mrrcnn_small(**SMALL, **EVAL_ALL).eval()
    image = [images_and_targets()[0][0]]
    with torch.no_grad():
        model.roi_heads.alpha = 0.0
        at_zero = model(image)[0]["scores"]
        model.roi_heads.alpha = 5.0
        at_five = model(image)[0]["scores"]
    assert at_zero.shape == at_five.shape and not torch.allclose(at_zero.sort().values, at_five.sort().values)


@pytest.fixture(scope="module")
def torchvision_checkpoint(tmp_path_factory):
    """A randomly initialised torchvision Mask R-CNN R50-FPN saved to a file: nothing is downloaded."""
    torch.manual_seed(3)
    reference = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91, min_size=128, max_size=128
    )
    # Random logits are nearly uniform over 91 classes; spread them so that scores are well separated.
    reference.roi_heads.box_predictor.cls_score.weight.data.mul_(6)
    path = tmp_path_factory.mktemp("weights") / "maskrcnn_r50_fpn.pth"
    torch.save(reference.state_dict(), path)
    return reference.eval(), path


def test_loads_a_torchvision_mask_rcnn_and_copies_its_heads_into_the_refining_module(torchvision_checkpoint):
    reference, path = torchvision_checkpoint
    model = MaskRefiningRCNN(
        torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).backbone, 91
    )
    result = model.load_state_dict(reference.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all(k.startswith(model.roi_heads.refining_parameter_prefixes) for k in result.missing_keys)

    built = mrrcnn_resnet50_fpn(base_weights=str(path), num_classes=91)
    heads = built.roi_heads
    for base, refining in (
        (heads.box_head, heads.refine_box_head),
        (heads.box_predictor, heads.refine_box_predictor),
        (heads.mask_head, heads.refine_mask_head),
        (heads.mask_predictor, heads.refine_mask_predictor),
    ):
        base_state, refining_state = base.state_dict(), refining.state_dict()
        assert base_state.keys() == refining_state.keys()
        assert all(torch.equal(base_state[k], refining_state[k]) for k in base_state)
    with pytest.raises(ValueError, match="num_classes"):
        mrrcnn_resnet50_fpn(base_weights="COCO_V1", num_classes=5)


def test_alpha_zero_without_refined_boxes_equals_the_torchvision_mask_rcnn_it_loaded(torchvision_checkpoint):
    reference, path = torchvision_checkpoint
    model = mrrcnn_resnet50_fpn(
        base_weights=str(path), num_classes=91, min_size=128, max_size=128, alpha=0.0, refine_reg=False
    ).eval()
    images = [torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(4)), torch.rand(3, 96, 128)]
    with torch.no_grad():
        expected, actual = reference(images), model(images)
    for e, a in zip(expected, actual):
        assert len(e["boxes"]) > 0
        assert torch.equal(e["labels"], a["labels"])
        torch.testing.assert_close(a["boxes"], e["boxes"], rtol=0, atol=1e-4)
        torch.testing.assert_close(a["scores"], e["scores"], rtol=0, atol=1e-5)
        # The refining mask head is stage 1's and the mask flow starts at zero: the masks agree too.
        torch.testing.assert_close(a["masks"], e["masks"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_eval_under_no_grad(device):
    model = mrrcnn_small(**SMALL).to(device).eval()
    with torch.no_grad():
        outputs = model([image.to(device) for image in images_and_targets()[0]])
    assert len(outputs) == 2
    for output in outputs:
        assert set(output) == {"boxes", "labels", "scores", "masks"}
        assert output["boxes"].device.type == device
        assert not output["scores"].requires_grad


def test_is_a_torchvision_mask_rcnn():
    model = mrrcnn_small(**SMALL)
    assert isinstance(model, MaskRCNN)
    assert isinstance(model.roi_heads, torchvision.models.detection.roi_heads.RoIHeads)


def test_ground_truth_sara_masks_train_and_read_the_targets():
    model = mrrcnn_small(**SMALL, sara_masks="ground_truth")
    seen = []
    model.roi_heads.refine_box_roi_pool.register_forward_hook(lambda m, args, out: seen.append(args[3]))
    losses = train_losses(model)
    assert set(losses) == TORCHVISION_LOSSES | REFINING_LOSSES
    # Box-frame ground truth: the targets are rectangles, so some cells are fully inside.
    assert seen[-1].shape[-2:] == (28, 28) and seen[-1].max() > 0.999

    model.eval()
    images, targets = images_and_targets()
    with pytest.raises(ValueError, match="pass targets at evaluation too"):
        model(images)
    with torch.no_grad():
        with_truth = model(images, targets)
        model.roi_heads.sara_masks = "predicted"
        predicted = model(images)
    assert len(with_truth) == 2 and set(with_truth[0]) == {"boxes", "labels", "scores", "masks"}
    assert not torch.equal(with_truth[0]["scores"], predicted[0]["scores"])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("builder", [maskrcnn_small, mrrcnn_small])
def test_gradients_come_back_in_their_parameters_layout(builder, threads):
    # DDP warns "Grad strides do not match bucket view strides" otherwise (1x1 convolutions of the heads,
    # whose gradients follow the channels-last pooled features; with 2 threads on the CPU).
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = builder(**SMALL)
        sum(train_losses(model).values()).backward()
    finally:
        torch.set_num_threads(previous)
    assert not [
        n for n, p in model.named_parameters() if p.grad is not None and p.grad.stride() != p.stride()
    ]
