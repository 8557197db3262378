import pytest
import torch

from mrrcnn.engine.checkpoint import load_checkpoint, save_checkpoint


class Opaque:
    """An arbitrary object, which ``weights_only`` loading must refuse."""


def state() -> dict:
    return {
        "model": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3, dtype=torch.int64)},
        "rng": [{"torch": torch.get_rng_state(), "python": [3, list(range(5)), None]}],
        "iteration": 7,
        "lr": 0.02,
        "config": {"model": {"name": "maskrcnn_small"}, "train": {"milestones": [1, 2]}},
        "categories": {1: "disk", 2: "square"},
    }


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip_under_weights_only(tmp_path):
    path = tmp_path / "sub" / "last.pth"
    save_checkpoint(path, state())
    assert_same(load_checkpoint(path), state())
    assert_same(torch.load(path, weights_only=True), state())
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]


def test_overwrite_replaces_the_file(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint(path, {"iteration": 1})
    save_checkpoint(path, {"iteration": 2})
    assert load_checkpoint(path) == {"iteration": 2}


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint(path, state())
    before = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {"iteration": 8})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_unpicklable_state_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint(path, {"iteration": 1})
    with pytest.raises(TypeError, match="cannot pickle"):
        save_checkpoint(path, {"generator": (i for i in range(3))})
    assert load_checkpoint(path) == {"iteration": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_truncated_file_is_a_clear_error_and_left_alone(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint(path, state())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    truncated = path.read_bytes()
    with pytest.raises(ValueError, match=rf"checkpoint {path} is truncated or corrupt"):
        load_checkpoint(path)
    assert path.read_bytes() == truncated


def test_corrupt_missing_and_foreign_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pth is truncated or corrupt"):
        load_checkpoint(garbage)
    with pytest.raises(ValueError, match="nowhere.pth does not exist"):
        load_checkpoint(tmp_path / "nowhere.pth")
    opaque = tmp_path / "opaque.pth"
    torch.save({"x": Opaque()}, opaque)
    with pytest.raises(ValueError, match="opaque.pth"):
        load_checkpoint(opaque)
    bare = tmp_path / "tensor.pth"
    torch.save(torch.zeros(2), bare)
    with pytest.raises(ValueError, match="tensor.pth holds a Tensor, not a dict"):
        load_checkpoint(bare)
