"""On a GPU host: a few AMP training iterations, evaluation and prediction on CUDA, end to end."""

import json

import pytest
import torch

from mrrcnn.config import load_config
from mrrcnn.data import make_synthetic
from mrrcnn.engine.checkpoint import load_checkpoint, load_model
from mrrcnn.engine.train import train
from mrrcnn.evaluation.evaluate import evaluate_model
from mrrcnn.inference.predict import predict

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_amp_training_evaluation_and_prediction_on_cuda(tmp_path):
    data = make_synthetic(tmp_path / "data", 4, 2, image_size=64)
    overrides = [
        f"data.train.images={data['train']['images_dir']}",
        f"data.train.annotations={data['train']['annotation_file']}",
        f"data.val.images={data['val']['images_dir']}",
        f"data.val.annotations={data['val']['annotation_file']}",
        f"train.output_dir={tmp_path / 'run'}",
        "model.base_weights=null",
        "model.min_size=64",
        "model.max_size=64",
        "data.workers=0",
        "train.iterations=3",
        "train.warmup_iters=1",
        "train.amp=true",
        "train.eval_every=3",
    ]
    final = train(load_config("synthetic/mrrcnn_small", overrides), progress=False)
    state = load_checkpoint(final.parent / "last.pth")
    assert "scaler" in state and state["iteration"] == 3
    model, config, _ = load_model(final, device="cuda")
    assert next(model.parameters()).is_cuda
    with torch.autocast("cuda"):
        metrics = evaluate_model(model, config, "val", tmp_path / "eval", progress=False)
    assert "bbox/AP" in metrics
    path = predict(final, [data["val"]["images_dir"]], tmp_path / "predict", device="cuda", progress=False)
    assert len(json.loads(path.read_text())["images"]) == 2
