import torch

from mrrcnn.data import Compose, RandomHorizontalFlip


def _sample():
    image = torch.arange(2 * 3 * 6, dtype=torch.float32).reshape(2, 3, 6)
    masks = torch.zeros(2, 3, 6, dtype=torch.uint8)
    masks[0, 0, 0:2] = 1
    masks[1, 1:3, 3] = 1
    target = {
        "boxes": torch.tensor([[0.0, 0, 2, 1], [3.0, 1, 4, 3]]),
        "masks": masks,
        "labels": torch.tensor([1, 2]),
    }
    return image, target


def test_flip_is_exact():
    image, target = _sample()
    flipped, out = RandomHorizontalFlip(p=1.0)(image, target)
    assert torch.equal(flipped, image[:, :, [5, 4, 3, 2, 1, 0]])
    assert out["boxes"].tolist() == [[4, 0, 6, 1], [2, 1, 3, 3]]
    expected = torch.zeros(2, 3, 6, dtype=torch.uint8)
    expected[0, 0, 4:6] = 1
    expected[1, 1:3, 2] = 1
    assert torch.equal(out["masks"], expected)
    assert out["labels"] is target["labels"]
    assert target["boxes"].tolist() == [[0, 0, 2, 1], [3, 1, 4, 3]]  # the input is left alone


def test_flip_of_empty_target():
    image = torch.zeros(3, 4, 5)
    target = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 4, 5, dtype=torch.uint8)}
    _, out = RandomHorizontalFlip(p=1.0)(image, target)
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 4, 5)


def test_never_flip():
    image, target = _sample()
    out_image, out_target = RandomHorizontalFlip(p=0.0)(image, target)
    assert out_image is image and out_target is target


def test_flips_follow_the_torch_seed():
    image, target = _sample()
    flip = Compose([RandomHorizontalFlip(0.5)])

    def draws():
        return [flip(image, target)[1]["boxes"][0, 0].item() for _ in range(20)]

    torch.manual_seed(0)
    first = draws()
    torch.manual_seed(0)
    assert draws() == first
    assert set(first) == {0.0, 4.0}


def test_compose_applies_in_order():
    calls = []

    def step(name):
        def apply(image, target):
            calls.append(name)
            return image + 1, {**target, name: image.sum().item()}

        return apply

    image, target = Compose([step("a"), step("b")])(torch.zeros(1, 2, 2), {})
    assert calls == ["a", "b"]
    assert torch.equal(image, torch.full((1, 2, 2), 2.0))
    assert target == {"a": 0.0, "b": 4.0}
