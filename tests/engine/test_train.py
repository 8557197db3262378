import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision.models.detection.roi_heads as tv_roi_heads
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mrrcnn.config import load_config
from mrrcnn.data import CLASSES, make_synthetic
from mrrcnn.engine.checkpoint import load_checkpoint, run_lock
from mrrcnn.engine.train import Trainer, train

# Small enough for a few CPU iterations a second: 64-pixel images, fewer proposals and sampled RoIs.
FAST = [
    "model.min_size=64",
    "model.max_size=64",
    "model.rpn_pre_nms_top_n_train=128",
    "model.rpn_post_nms_top_n_train=64",
    "model.box_batch_size_per_image=32",
    "data.workers=0",
    "train.batch_size=2",
    "train.warmup_iters=2",
    "train.milestones=[2]",
    "train.log_every=1",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On a loaded 2-core machine, two OpenMP threads per op can run many times slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    make_synthetic(root, 6, 2, image_size=64)
    return root


def make_config(data: Path, tmp: Path, *overrides: str, name: str = "maskrcnn_small") -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"name": name, "num_classes": len(CLASSES) + 1},
                "data": {
                    split: {
                        "images": str(data / split),
                        "annotations": str(data / f"annotations/{split}.json"),
                    }
                    for split in ("train", "val")
                },
                "train": {"output_dir": str(tmp / "run")},
            }
        )
    )
    return load_config(path, [*FAST, *overrides])


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def fail_on_call(monkeypatch, module, call: int, failure) -> None:
    """Make ``module.maskrcnn_loss`` call ``failure(loss)`` from its ``call``-th call on."""
    original, calls = module.maskrcnn_loss, []

    def patched(*args, **kwargs):
        calls.append(None)
        loss = original(*args, **kwargs)
        return failure(loss) if len(calls) >= call else loss

    monkeypatch.setattr(module, "maskrcnn_loss", patched)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """A 3-iteration maskrcnn_small run, evaluated at its end."""
    tmp = tmp_path_factory.mktemp("trained")
    config = make_config(data, tmp, "train.iterations=3", "train.checkpoint_every=2", "train.eval_every=3")
    assert train(config, progress=False) == tmp / "run" / "final.pth"
    return tmp / "run"


def test_outputs(trained):
    assert (trained / "config.yaml").is_file()
    final = load_checkpoint(trained / "final.pth")
    assert {"model", "config", "categories", "iteration"} <= final.keys()
    assert "optimizer" not in final
    assert final["iteration"] == 3
    assert final["categories"] == dict(enumerate(CLASSES, start=1))
    assert load_config(trained / "config.yaml") == final["config"]
    last = load_checkpoint(trained / "last.pth")
    assert last["iteration"] == 3
    assert all(torch.equal(last["model"][k], v) for k, v in final["model"].items())

    logged = scalars(trained)
    for tag in ("loss/total", "loss/loss_classifier", "loss/loss_mask", "loss/loss_objectness", "lr"):
        assert [step for step, _ in logged[tag]] == [1, 2, 3]
    # Warmup from 0.001 x lr over 2 iterations, then the milestone at iteration index 2.
    assert [lr for _, lr in logged["lr"]] == pytest.approx([0.02 * 0.001, 0.02 * 0.5005, 0.02 * 0.1])
    assert [step for step, _ in logged["AP/segm/AP"]] == [3]
    assert "AP/huddled/segm/AP" in logged


def test_resume_is_exact(data, tmp_path, monkeypatch):
    # Bit for bit on the CPU only: on CUDA the RoI poolings' backward adds with atomics, in any order.
    overrides = (
        "train.iterations=4",
        "train.checkpoint_every=2",
        "data.workers=2",
        "data.hflip=0.5",
        "train.device=cpu",
    )
    straight = train(make_config(data, tmp_path / "straight", *overrides), progress=False)

    config = make_config(data, tmp_path / "resumed", *overrides)
    with monkeypatch.context() as patch:

        def interrupt(loss):
            raise KeyboardInterrupt

        fail_on_call(patch, tv_roi_heads, 3, interrupt)
        with pytest.raises(KeyboardInterrupt):
            train(config, progress=False)
    last = tmp_path / "resumed" / "run" / "last.pth"
    assert load_checkpoint(last)["iteration"] == 2
    assert not (tmp_path / "resumed" / "run" / "final.pth").exists()
    # Resumed with loader processes of another number: the data, and so the run, do not depend on them.
    config = make_config(data, tmp_path / "resumed", *overrides, "data.workers=0")
    resumed = train(config, resume=True, progress=False)

    a, b = load_checkpoint(straight)["model"], load_checkpoint(resumed)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = (load_checkpoint(p.parent / "last.pth") for p in (straight, resumed))
    assert a["data_position"] == b["data_position"] == 8
    assert all(
        torch.equal(x["momentum_buffer"], y["momentum_buffer"])
        for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())
    )


def test_resume_refuses_a_changed_config(trained):
    config = load_config(trained / "config.yaml", ["train.lr=0.5", "train.iterations=5"])
    before = (trained / "last.pth").stat().st_mtime_ns
    with pytest.raises(ValueError, match=r"changed in more than train.iterations \(train.lr: 0.02 -> 0.5\)"):
        train(config, resume=True, progress=False)
    assert (trained / "last.pth").stat().st_mtime_ns == before


def test_resume_starts_fresh_without_a_checkpoint_and_says_which_it_did(data, tmp_path, caplog):
    # As detectron2's --resume: what a run restarted by torchrun --max-restarts needs.
    config = make_config(data, tmp_path, "train.iterations=1")
    with caplog.at_level(logging.INFO, logger="mrrcnn"):
        assert load_checkpoint(train(config, resume=True, progress=False))["iteration"] == 1
    assert f"no {tmp_path / 'run' / 'last.pth'} yet: starting fresh" in caplog.text
    # On the CPU, train.amp (on by default) has no effect: the one training line says so, no note of its own.
    assert "on cpu in float32" in caplog.text and "train.amp" not in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mrrcnn"):
        train(config, progress=False)
    assert "last.pth exists and will be overwritten (mrrcnn train --resume continues it)" in caplog.text
    with caplog.at_level(logging.INFO, logger="mrrcnn"):
        train({**config, "train": {**config["train"], "iterations": 2}}, resume=True, progress=False)
    assert f"resuming from {tmp_path / 'run' / 'last.pth'} at iteration 1" in caplog.text


def test_non_finite_loss_stops_and_keeps_last_checkpoint(data, tmp_path, monkeypatch):
    config = make_config(data, tmp_path, "train.iterations=4", "train.checkpoint_every=2")
    fail_on_call(monkeypatch, tv_roi_heads, 3, lambda loss: loss * float("nan"))
    with pytest.raises(
        FloatingPointError, match=r"iteration 3: loss_mask=nan.*last.pth \(iteration 2\) is kept"
    ):
        train(config, progress=False)
    last = load_checkpoint(tmp_path / "run" / "last.pth")
    assert last["iteration"] == 2
    assert all(v.isfinite().all() for v in last["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "final.pth").exists()


def test_finetune_mrrcnn_from_maskrcnn(data, trained, tmp_path):
    base = trained / "final.pth"
    config = make_config(
        data,
        tmp_path,
        "train.iterations=2",
        f"model.base_weights={base}",
        "model.refine_reg=false",
        name="mrrcnn_small",
    )
    final = load_checkpoint(train(config))
    assert any(k.startswith("roi_heads.refine_box_head.") for k in final["model"])
    logged = scalars(tmp_path / "run")
    assert "loss/loss_refine_classifier" in logged and "loss/loss_refine_mask" in logged
    assert "loss/loss_refine_box_reg" not in logged


# An iteration without images steps the schedule but not the optimizer, which torch warns about.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
# pytest.warns re-emits the warnings it did not match, pycocotools' NumPy 2 deprecation among them.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_unreadable_images_are_skipped_and_counted(data, tmp_path, caplog):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    broken = min((copy / "train").iterdir())
    broken.write_bytes(broken.read_bytes()[:100])
    # One image per iteration over two epochs: the broken image's iterations have an empty batch.
    config = make_config(copy, tmp_path, "data.skip_bad=true", "train.batch_size=1", "train.iterations=12")
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match=broken.name):
        train(config, progress=False)
    assert caplog.text.count("no image of a batch could be read") == 2
    # Images are counted, not reads.
    assert "1 training image(s) could not be read" in caplog.text
    assert len(load_checkpoint(tmp_path / "run" / "last.pth")["unreadable_images"]) == 1


def test_bad_configs(data, tmp_path):
    with pytest.raises(ValueError, match="train.iterations must be an integer >= 1, got 0"):
        train(make_config(data, tmp_path, "train.iterations=0"), progress=False)
    with pytest.raises(ValueError, match="train.milestones must increase"):
        train(make_config(data, tmp_path, "train.milestones=[5, 2]"), progress=False)
    with pytest.raises(ValueError, match=r"data.val must be a mapping"):
        train(make_config(data, tmp_path, "train.eval_every=1", "data.val=null"), progress=False)
    with pytest.raises(
        ValueError, match=r"train.json: category ids go up to 5, but the model has num_classes=3"
    ):
        train(make_config(data, tmp_path, "model.num_classes=3"), progress=False)


def test_a_crop_larger_than_every_training_image_is_an_error(data, tmp_path):
    with pytest.raises(
        ValueError,
        match=r"data.crop_size \(65\) is larger than every training image \(largest 64x64\); lower it or set 0",
    ):
        train(make_config(data, tmp_path, "data.crop_size=65"), progress=False)


def test_training_on_crops(data, tmp_path):
    config = make_config(data, tmp_path, "data.crop_size=24", "data.hflip=0")
    trainer = Trainer(config, torch.device("cpu"))
    batch = next(trainer.batches())
    images, targets, _ = batch
    assert [image.shape for image in images] == [(3, 24, 24)] * 2
    assert all(target["masks"].shape[1:] == (24, 24) for target in targets)
    # A crop may hold no instance; torchvision's Mask R-CNN trains on such a target.
    empty = {**targets[1], "boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 24, 24, dtype=torch.uint8)}
    empty.update(labels=torch.zeros(0, dtype=torch.int64), area=torch.zeros(0), iscrowd=torch.zeros(0))
    losses = trainer.run_step((images, [targets[0], empty], []))
    assert losses is not None and all(math.isfinite(v) for v in losses.values())


def test_a_second_run_into_the_same_folder_fails_naming_the_first(data, tmp_path):
    config = make_config(data, tmp_path, "train.iterations=1")
    with (
        run_lock(tmp_path / "run"),
        pytest.raises(
            ValueError, match=rf"{tmp_path / 'run'} is in use by another training run \(pid {os.getpid()} on "
        ),
    ):
        train(config, progress=False)
    assert not (tmp_path / "run" / "final.pth").exists()


def test_a_killed_run_leaves_no_stale_lock_and_its_temporaries_are_removed(data, tmp_path):
    config = make_config(data, tmp_path, "train.iterations=1")
    run = tmp_path / "run"
    code = f"from mrrcnn.engine.checkpoint import run_lock\nimport os\nwith run_lock({str(run)!r}):\n    os.kill(os.getpid(), 9)"
    subprocess.run([sys.executable, "-c", code], check=False)
    assert "pid" in (run / ".lock").read_text()
    stale = run / ".last.pth.12345.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(config, progress=False)
    assert not stale.exists() and (run / "final.pth").is_file()


def test_resume_from_a_moved_folder_or_another_spelling_of_it(data, tmp_path, monkeypatch):
    config = make_config(data, tmp_path / "a", "train.iterations=2", "train.checkpoint_every=1")
    train(config, progress=False)
    shutil.move(tmp_path / "a" / "run", tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    moved = {**config, "train": {**config["train"], "output_dir": "./moved/", "iterations": 3}}
    assert load_checkpoint(train(moved, resume=True, progress=False))["iteration"] == 3


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_training_data_none_of_which_can_be_read_is_an_error(data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    for image in (copy / "train").iterdir():
        image.write_bytes(b"not an image")
    config = make_config(copy, tmp_path, "data.skip_bad=true", "train.iterations=50")
    with pytest.raises(ValueError, match=r"none of the 6 training images of .* could be read"):
        train(config, progress=False)
    assert not (tmp_path / "run" / "final.pth").exists()


def test_a_failed_checkpoint_write_is_an_os_error_and_keeps_the_previous_one(data, tmp_path, monkeypatch):
    config = make_config(data, tmp_path, "train.iterations=2", "train.checkpoint_every=1")
    calls = []
    original = torch.save

    def full_disk(obj, f, *args, **kwargs):
        calls.append(None)
        if len(calls) == 2:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file"
            )
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(
        OSError, match=r"cannot write checkpoint .*last.pth \(disk full\?\); the previous one is kept"
    ):
        train(config, progress=False)
    assert load_checkpoint(tmp_path / "run" / "last.pth")["iteration"] == 1
    assert not list((tmp_path / "run").glob(".*.tmp"))
