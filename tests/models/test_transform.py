import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from mrrcnn.config import load_config
from mrrcnn.models import build_model
from mrrcnn.models.transform import ScaleTransform

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def sample(height: int, width: int):
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(2, height, width, generator=g) > 0.5).to(torch.uint8)
    target = {"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 9.0, 12.0]]), "masks": masks}
    return torch.rand(3, height, width, generator=g), target


@pytest.mark.parametrize("training", [False, True])
def test_scale_mode_equals_min_max_where_they_agree(training):
    scaled = ScaleTransform(2.0, MEAN, STD)
    min_max = GeneralizedRCNNTransform(320, 320, MEAN, STD)
    scaled.train(training), min_max.train(training)
    image, target = sample(160, 160)
    (a, ta), (b, tb) = (t([image.clone()], [{k: v.clone() for k, v in target.items()}]) for t in (scaled, min_max))
    assert a.image_sizes == b.image_sizes == [(320, 320)]
    assert torch.equal(a.tensors, b.tensors)
    assert torch.equal(ta[0]["boxes"], tb[0]["boxes"]) and torch.equal(ta[0]["masks"], tb[0]["masks"])


def test_scale_keeps_every_image_at_one_scale():
    transform = ScaleTransform(0.5, MEAN, STD).eval()
    images, _ = transform([torch.rand(3, 64, 100), torch.rand(3, 300, 40)])
    assert images.image_sizes == [(32, 50), (150, 20)]
    same = ScaleTransform(1.0, MEAN, STD).eval()
    image = torch.rand(3, 37, 53)
    assert same([image])[0].image_sizes == [(37, 53)]
    with pytest.raises(ValueError, match="model.scale must be > 0"):
        ScaleTransform(0.0, MEAN, STD)


def test_scale_mode_model_matches_min_max_model():
    config = load_config("synthetic/maskrcnn_small")["model"]
    torch.manual_seed(0)
    min_max = build_model(**{**config, "min_size": 160, "max_size": 160}).eval()
    scaled = build_model(**config, resize="scale", scale=1.0).eval()
    assert isinstance(scaled.transform, ScaleTransform)
    scaled.load_state_dict(min_max.state_dict())
    image = torch.rand(3, 160, 160)
    with torch.no_grad():
        a, b = min_max([image])[0], scaled([image])[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resize_keys_are_validated():
    with pytest.raises(ValueError, match="model.scale must be a finite number > 0"):
        load_config("synthetic/maskrcnn_small", ["model.resize=scale", "model.scale=0"])
    with pytest.raises(ValueError, match="model.resize must be min_max"):
        load_config("synthetic/maskrcnn_small", ["model.resize=fixed"])
    with pytest.raises(ValueError, match=r"eval.tile_size \(64\) must exceed eval.tile_overlap \(64\)"):
        load_config("synthetic/maskrcnn_small", ["eval.tile_size=64", "eval.tile_overlap=64"])
