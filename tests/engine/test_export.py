"""Export to an ExportedProgram, ONNX (both exporters) and TorchScript: the files hold the eval-mode model,
detection for detection."""

import copy

import pytest
import torch

from mrrcnn.config import CONFIG_DIR, load_config
from mrrcnn.engine import export
from mrrcnn.engine.checkpoint import load_model, save_checkpoint
from mrrcnn.engine.export import (
    check_export,
    compare_detections,
    export_checkpoint,
    export_model,
    load_exported,
    sample_image,
)
from mrrcnn.models import build_model, mrrcnn_small
from mrrcnn.ops import MultiScaleShapeAwareRoIAlign

SIZE = ["model.min_size=128", "model.max_size=128"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run faster on one thread than on several competing with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_refining_model(seed=0, **kwargs):
    """An untrained mrrcnn_small whose refining heads differ from stage 1's, so that the refined scores,
    boxes and masks are not stage 1's; its detections score about 1 / num_classes, above 0.05."""
    torch.manual_seed(seed)
    model = mrrcnn_small(num_classes=6, min_size=128, max_size=128, **kwargs)
    heads = model.roi_heads
    torch.nn.init.normal_(heads.refine_box_predictor.cls_score.weight, std=0.05)
    torch.nn.init.normal_(heads.refine_box_predictor.bbox_pred.weight, std=0.01)
    torch.nn.init.normal_(heads.mask_flow.weight, std=0.01)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = load_config(CONFIG_DIR / "synthetic/mrrcnn_small.yaml", ["model.base_weights=null", *SIZE])
    model = small_refining_model()
    path = tmp_path_factory.mktemp("run") / "final.pth"
    save_checkpoint(path, {"model": model.state_dict(), "config": config, "categories": {}, "iteration": 0})
    return path


def needs_onnx():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")


def assert_checked(checks, resized=False):
    # The PyTorch 2 formats are checked on an image the model resizes too (check_image_sizes).
    assert [c["image"] for c in checks] == ["128x128", "128x96"] + ["192x192"] * resized
    for c in checks:
        assert c["detections"] > 10
        assert c["max_box_error_relative"] <= 1e-3 and c["max_score_error"] <= 1e-4
        assert c["min_mask_iou"] >= 0.99


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_matches_pytorch_and_keeps_alpha_settable(checkpoint, tmp_path):
    result = export_checkpoint(checkpoint, tmp_path / "model.pt", "torchscript", check=True)
    assert result.path.is_file() and result.alpha == 1.0
    assert_checked(result.checks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary left

    model = load_model(checkpoint, device="cpu")[0]
    detector = torch.jit.load(str(result.path))
    image = sample_image((96, 128), seed=5)
    with torch.no_grad():
        boxes, labels, scores, masks = detector(image)
        expected = model([image])[0]
    assert masks.shape == (len(boxes), 1, 96, 128) and labels.dtype == torch.int64
    compare_detections(expected, dict(zip(export.OUTPUT_NAMES, (boxes, labels, scores, masks))), "alpha 1")

    # alpha stays an attribute of the scripted model, as in PyTorch.
    detector.model.roi_heads.alpha = 0.25
    model.roi_heads.alpha = 0.25
    with torch.no_grad():
        actual = dict(zip(export.OUTPUT_NAMES, detector(image)))
        expected_quarter = model([image])[0]
    compare_detections(expected_quarter, actual, "alpha 0.25")
    assert not torch.allclose(expected_quarter["scores"][:5], expected["scores"][:5])


@pytest.mark.parametrize("fmt", ["exported-program", "onnx", "onnx-legacy"])
def test_traced_formats_match_pytorch_with_alpha_as_exported(checkpoint, tmp_path, fmt):
    if fmt != "exported-program":
        needs_onnx()
    out = tmp_path / "model.pt2"
    result = export_checkpoint(checkpoint, out, fmt, check=True, overrides=["model.alpha=0.5"])
    assert result.alpha == 0.5
    assert_checked(result.checks, resized=fmt != "onnx-legacy")

    model = load_model(checkpoint, device="cpu", overrides=["model.alpha=0.5"])[0]
    run = load_exported(out, fmt)
    # Resized sides above 64 pixels: what an exported program takes (mrrcnn/engine/export.py).
    for size, seed in (((96, 128), 6), ((128, 80), 7)):
        image = sample_image(size, seed)
        with torch.no_grad():
            expected = model([image])[0]
        actual = run(image)
        assert actual["masks"].shape[2:] == size
        assert compare_detections(expected, actual, f"{size}")["detections"] > 10


@pytest.mark.parametrize("fmt", ["exported-program", "onnx-legacy"])
def test_no_detection_exports_and_runs(checkpoint, tmp_path, fmt):
    needs_onnx()
    thresholds = ["model.box_score_thresh=0.99"]
    result = export_checkpoint(checkpoint, tmp_path / "m.pt2", fmt, check=True, overrides=thresholds)
    assert all(c["detections"] == 0 for c in result.checks)
    actual = load_exported(result.path, fmt)(sample_image((128, 128), 3))
    assert actual["boxes"].shape == (0, 4) and actual["masks"].shape == (0, 1, 128, 128)


def test_mask_rcnn_exports_too(tmp_path):
    needs_onnx()
    config = load_config(CONFIG_DIR / "synthetic/maskrcnn_small.yaml", SIZE)
    torch.manual_seed(1)
    model = build_model(**config["model"]).eval()
    for fmt in export.FORMATS:
        path = export_model(model, tmp_path / f"{fmt}.pt2", fmt)
        checks = check_export(model, path, fmt)
        assert all(c["detections"] > 10 for c in checks)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("weighting", ["others", "ownership", "iterative"])
def test_every_sara_weighting_exports(weighting, tmp_path):
    needs_onnx()
    model = small_refining_model(sara_weighting=weighting)
    # torch.export takes half a minute: once, on the weighting that reads both the own and the others' masks.
    formats = ("exported-program", "onnx") if weighting == "ownership" else ()
    for fmt in (*formats, "torchscript", "onnx-legacy"):
        path = export_model(model, tmp_path / f"{fmt}.pt2", fmt)
        assert_checked(check_export(model, path, fmt), resized=fmt in ("exported-program", "onnx"))


def test_what_cannot_be_exported_is_refused(checkpoint, tmp_path, monkeypatch):
    model = small_refining_model()
    with pytest.raises(ValueError, match="sara_masks='ground_truth'.*no input"):
        export_checkpoint(
            checkpoint, tmp_path / "m.pt", "torchscript", overrides=["model.sara_masks=ground_truth"]
        )
    names = ["0", "1", "2", "3"]
    adaptive = small_refining_model(box_roi_pool=MultiScaleShapeAwareRoIAlign(names, 7, 0))
    with pytest.raises(ValueError, match=r"roi_heads.refine_box_roi_pool has sampling_ratio=0 \(adaptive\)"):
        export_model(adaptive, tmp_path / "m.pt", "torchscript")
    # Without Shape-aware RoIAlign the same pooler gets no masks: plain RoIAlign exports with any sampling.
    plain = copy.deepcopy(adaptive)
    plain.roi_heads.shape_aware = False
    export_model(plain, tmp_path / "plain.pt", "torchscript")
    for kwargs, match in (
        ({"fmt": "tflite"}, "format must be one of exported-program, onnx, torchscript, onnx-legacy"),
        ({"fmt": "onnx", "opset": 9}, "opset must be an integer in 18..21 for onnx"),
        ({"fmt": "onnx-legacy", "opset": 21}, "opset must be an integer in 11..20 for onnx-legacy"),
        ({"fmt": "exported-program", "opset": 18}, "opset applies to the ONNX formats only"),
        ({"fmt": "onnx", "image_size": (16, 128)}, "image_size"),
    ):
        with pytest.raises(ValueError, match=match):
            export_model(model, tmp_path / "m.onnx", **kwargs)
    with pytest.raises(ValueError, match="is a folder"):
        export_model(model, tmp_path, "torchscript")
    with pytest.raises(ValueError, match=r"m.pte: an exported program's file name ends in .pt2"):
        export_model(model, tmp_path / "m.pte", "exported-program")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.pt"]
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="onnx export needs the onnx package"):
        export_model(model, tmp_path / "m.onnx", "onnx")


def detections(boxes, labels, scores, size=(20, 20)):
    boxes = torch.tensor(boxes, dtype=torch.float32)
    masks = torch.zeros(len(boxes), 1, *size)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
        mask[:, y1:y2, x1:x2] = 0.9
    return {"boxes": boxes, "labels": torch.tensor(labels), "scores": torch.tensor(scores), "masks": masks}


def test_compare_detections_accepts_rounding_and_tie_order_and_names_disagreements():
    expected = detections([[1, 1, 9, 9], [5, 5, 15, 15], [2, 10, 8, 18]], [1, 2, 1], [0.9, 0.5, 0.5])
    # The two tied detections in the other order, everything off by rounding.
    swapped = detections([[1, 1, 9, 9], [2, 10, 8, 18], [5, 5, 15, 15]], [1, 1, 2], [0.9, 0.50001, 0.5])
    swapped["boxes"] += 1e-4
    summary = compare_detections(expected, swapped, "swapped")
    assert summary["detections"] == 3 and summary["max_box_error_px"] == pytest.approx(1e-4, rel=1e-2)

    fewer = {k: v[:2] for k, v in expected.items()}
    with pytest.raises(ValueError, match="image A: 2 detections, PyTorch 3"):
        compare_detections(expected, fewer, "image A")
    rescored = copy.deepcopy(expected)
    rescored["scores"][1] += 1e-3
    with pytest.raises(ValueError, match="detection 1 .label 2, score 0.500000. has no counterpart"):
        compare_detections(expected, rescored, "image B")
    moved = copy.deepcopy(expected)
    moved["boxes"][0, 2] += 0.1
    with pytest.raises(
        ValueError, match="boxes differ by up to 0.0125 of their size .tolerance 0.001., 0.1 px"
    ):
        compare_detections(expected, moved, "image C")
    reshaped = copy.deepcopy(expected)
    reshaped["masks"][0, :, 1:5] = 0.0
    with pytest.raises(ValueError, match="IoU 0.5000 < 0.99"):
        compare_detections(expected, reshaped, "image D")
    # Pixels at the threshold itself (a saturated mask next to the paste's zero padding) go either way.
    edge, rounded = copy.deepcopy(expected), copy.deepcopy(expected)
    edge["masks"][0, :, 1:5] = 0.5
    rounded["masks"][0, :, 1:5] = 0.5 + 1e-6
    assert compare_detections(edge, rounded, "image E")["min_mask_iou"] == 1.0


def test_scale_mode_exports(tmp_path):
    config = load_config(
        CONFIG_DIR / "synthetic/maskrcnn_small.yaml", ["model.resize=scale", "model.scale=0.5"]
    )
    torch.manual_seed(1)
    model = build_model(**config["model"]).eval()
    assert export.default_image_size(model) == (384, 512)
    path = export_model(model, tmp_path / "scaled.pt2", "exported-program")
    checks = check_export(model, path, "exported-program")
    # Sizes in image pixels, each at least what the scale makes 128 model-input pixels.
    assert export.check_image_sizes(model, "exported-program") == [(384, 512), (512, 288), (576, 768)]
    assert len(checks) == 3
    assert all(c["detections"] > 10 for c in checks)
