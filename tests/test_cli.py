"""Every command end to end through ``mrrcnn.cli.main``, on tiny data and models."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from mrrcnn import cli
from mrrcnn.cli import main
from mrrcnn.config import CONFIG_DIR, load_config
from mrrcnn.engine import demo, export
from mrrcnn.engine.checkpoint import save_checkpoint
from mrrcnn.engine.train import Trainer
from mrrcnn.inference import visualize
from mrrcnn.models import build_model

CONFIGS = CONFIG_DIR / "synthetic"
TINY = [
    "model.min_size=64",
    "model.max_size=64",
    "train.iterations=2",
    "train.batch_size=2",
    "data.workers=0",
]


def run(capsys, *argv) -> tuple[int, str, str]:
    status = main(["--no-progress" if a == "NOPROGRESS" else str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_error(result: tuple[int, str, str], command: str, *names: str) -> None:
    """Exit status 2 and one ``mrrcnn <command>: error:`` line naming ``names``, no traceback."""
    status, _, err = result
    assert status == 2
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith(f"mrrcnn {command}: error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0]


def data_overrides(data: Path) -> list[str]:
    """``data.train`` and ``data.val`` overrides for a folder written by ``mrrcnn synth``."""
    return [
        f"data.{split}.{key}={data / path}"
        for split in ("train", "val")
        for key, path in (("images", split), ("annotations", f"annotations/{split}.json"))
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``mrrcnn synth`` then ``mrrcnn train`` of a maskrcnn_small for 2 iterations."""
    root = tmp_path_factory.mktemp("cli")
    assert main(["synth", str(root / "data"), "--train", "4", "--val", "3", "--image-size", "64"]) == 0
    config = CONFIGS / "maskrcnn_small.yaml"
    argv = [
        "train",
        "--config",
        str(config),
        *data_overrides(root / "data"),
        *TINY,
        f"train.output_dir={root / 'run'}",
        "--no-progress",
    ]
    assert main(argv) == 0
    return root


def test_synth(capsys, tmp_path):
    status, out, _ = run(capsys, "synth", tmp_path, "--train", 2, "--val", 1, "--image-size", 64, "--seed", 3)
    assert status == 0
    assert out.startswith("train: 2 images, ") and "% huddled" in out and "\nval: 1 images, " in out
    assert len(list((tmp_path / "train").glob("*.png"))) == 2
    assert_error(
        run(capsys, "synth", tmp_path, "--train", 1, "--val", 1, "--image-size", 32), "synth", "image_size"
    )


def test_synth_object_size(capsys, tmp_path):
    """A large image of usual-size instances; an object size above the image size names the option."""
    argv = ["synth", tmp_path, "--train", 1, "--val", 0, "--image-size", 512, "--object-size", 160]
    status, out, _ = run(capsys, *argv)
    assert status == 0 and out.startswith("train: 1 images, ")
    coco = json.loads((tmp_path / "annotations" / "train.json").read_text())
    assert coco["info"]["object_size"] == 160 and coco["images"][0]["width"] == 512
    assert np.asarray(Image.open(tmp_path / "train" / "000000.png")).shape == (512, 512, 3)
    assert_error(
        run(capsys, "synth", tmp_path, "--image-size", 96, "--object-size", 160), "synth", "object_size"
    )


def test_convert_label_images_then_train_on_them(capsys, tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        label = np.zeros((64, 64), np.uint16)
        label[8:30, 8:30], label[8:30, 30:52], label[36:56, 20:44] = 1, 2, 3  # 1 and 2 touch
        # 16-bit nuclei of small range, as microscopes record them.
        tifffile.imwrite(
            images / f"cells{k}.tif", (rng.poisson(10, label.shape) + 200 * (label > 0)).astype(np.uint16)
        )
        Image.fromarray(label).save(labels / f"cells{k}.png")
    status, out, _ = run(capsys, "convert", images, labels, tmp_path / "coco", "--class-name", "nucleus")
    assert status == 0
    summary, hint = out.splitlines()
    coco = tmp_path / "coco"
    assert summary == (
        f"train: 2 images, 6 instances of 1 class(es) (nucleus) -> {coco / 'train'}, {coco / 'annotations/train.json'}"
    )
    assert hint.startswith("train on it: mrrcnn train --config CONFIG ")
    assert hint.endswith("model.num_classes=2 model.resize=scale model.scale=1 data.intensity=percentile")
    argv = ["train", "--config", "synthetic/maskrcnn_small", *hint.split("CONFIG ")[1].split(), *TINY]
    assert run(capsys, *argv, f"train.output_dir={tmp_path / 'run'}", "NOPROGRESS")[0] == 0
    final = torch.load(tmp_path / "run/final.pth", weights_only=True)
    assert final["categories"] == {1: "nucleus"} and final["config"]["data"]["intensity"] == "percentile"
    assert_error(run(capsys, "convert", images, tmp_path / "none", coco), "convert", "none: no such folder")


def test_train_and_eval(trained, capsys, tmp_path):
    assert (trained / "run" / "final.pth").is_file()
    status, out, _ = run(
        capsys, "eval", "--weights", trained / "run/final.pth", "--out", tmp_path, "NOPROGRESS"
    )
    assert status == 0
    assert out.startswith("| metric | overall | huddled | isolated |")
    assert "| segm/AP75 |" in out and "| bbox/APs |" in out
    metrics = json.loads((tmp_path / "metrics_val.json").read_text())
    assert "huddled/segm/AP" in metrics and "isolated/bbox/AP50" in metrics
    assert isinstance(json.loads((tmp_path / "results_val.json").read_text()), list)

    # --config and overrides replace the checkpoint's configuration.
    status, _, _ = run(
        capsys,
        "eval",
        "--weights",
        trained / "run/final.pth",
        "--config",
        CONFIGS / "maskrcnn_small.yaml",
        "model.min_size=64",
        "model.max_size=64",
        f"data.val.images={trained / 'data/val'}",
        f"data.val.annotations={trained / 'data/annotations/val.json'}",
        "--out",
        tmp_path / "given",
        "NOPROGRESS",
    )
    assert status == 0 and (tmp_path / "given" / "metrics_val.json").is_file()


@pytest.mark.filterwarnings("ignore:skipped:UserWarning")
def test_eval_with_no_image_readable_is_an_error(trained, capsys, tmp_path):
    # data.skip_bad=true skips unreadable images; when it skips them all there are no metrics to give.
    broken = tmp_path / "val"
    broken.mkdir()
    for image in (trained / "data/val").iterdir():
        (broken / image.name).write_bytes(b"not an image")
    argv = ["eval", "--weights", trained / "run/final.pth", "data.skip_bad=true", f"data.val.images={broken}"]
    assert_error(
        run(capsys, *argv, "--out", tmp_path), "eval", f"none of the 3 images of {broken} could be read"
    )
    assert not (tmp_path / "metrics_val.json").exists()


def test_predict(trained, capsys, tmp_path):
    status, out, _ = run(
        capsys,
        "predict",
        "--weights",
        trained / "run/final.pth",
        trained / "data/val",
        "--out",
        tmp_path,
        "--score-threshold",
        0.1,
        "--device",
        "cpu",
        "NOPROGRESS",
    )
    assert status == 0 and out.strip() == str(tmp_path / "predictions.json")
    assert len(json.loads((tmp_path / "predictions.json").read_text())["images"]) == 3
    stems = ("000000", "000001", "000002")
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(
        [f"{stem}.png" for stem in stems] + [f"{stem}_labels.png" for stem in stems]
    )

    # Overrides are KEY=VALUE arguments, as for every command.
    status, _, _ = run(
        capsys, "predict", "--weights", trained / "run/final.pth", trained / "data/val/000000.png",
        "eval.mask_threshold=0.7", "--out", tmp_path / "o", "NOPROGRESS",
    )  # fmt: skip
    assert status == 0 and sorted(p.name for p in (tmp_path / "o").glob("*.png")) == [
        "000000.png",
        "000000_labels.png",
    ]


def test_user_errors_are_one_line_with_status_2(trained, capsys, tmp_path):
    weights = trained / "run/final.pth"
    config = CONFIGS / "maskrcnn_small.yaml"
    # The README's Table-5 command with a typo, and bad values.
    assert_error(
        run(capsys, "eval", "--weights", weights, "model.alhpa=2"),
        "eval",
        "error: override 'model.alhpa=2': model.alhpa is not a known key; did you mean 'alpha'",
    )
    assert_error(run(capsys, "train", "--config", config, "model.min_size=abc"), "train", "model.min_size")
    assert_error(run(capsys, "train", "--config", config, "model.min_size=-5"), "train", "model.min_size")
    assert_error(
        run(capsys, "train", "--config", "synthetic/mrrcnn_small", "model.alpha=abc"), "train", "model.alpha"
    )
    assert_error(
        run(capsys, "train", "--config", config, "train.output_dir=null"), "train", "train.output_dir"
    )
    argv = ["train", "--config", config, *data_overrides(trained / "data"), *TINY, "data.crop_size=100"]
    assert_error(
        run(capsys, *argv, f"train.output_dir={tmp_path / 'crop'}"),
        "train",
        "data.crop_size (100) is larger than every training image (largest 64x64); lower it or set 0",
    )
    missing = tmp_path / "nowhere/final.pth"
    argv = ["train", "--config", "synthetic/mrrcnn_small", f"model.base_weights={missing}"]
    assert_error(run(capsys, *argv, f"train.output_dir={tmp_path / 'r'}"), "train", "no such checkpoint file")

    # --out that is a file fails before the evaluation.
    (tmp_path / "file").write_text("")
    assert_error(run(capsys, "eval", "--weights", weights, "--out", tmp_path / "file"), "eval", "is a file")
    image = trained / "data/val/000000.png"
    assert_error(
        run(capsys, "predict", "--weights", weights, image, "--out", tmp_path, "--score-threshold", "nan"),
        "predict",
        "score_threshold",
    )
    Image.new("RGB", (300, 2)).save(tmp_path / "thin.png")
    assert_error(
        run(capsys, "predict", "--weights", weights, tmp_path / "thin.png", "--out", tmp_path / "p"),
        "predict",
        "thin.png: a 300x2 image would be resized",
    )
    # The keys of whole-image inference, given after the options.
    predict = ["predict", "--weights", weights, image, "--out", tmp_path / "p"]
    assert_error(run(capsys, *predict, "model.resize=scale", "model.scale=0"), "predict", "model.scale")
    assert_error(
        run(capsys, *predict, "eval.tile_size=128", "eval.tile_overlap=128"),
        "predict",
        "eval.tile_size (128) must exceed eval.tile_overlap (128)",
    )


def test_ctrl_c_is_one_line(capsys, monkeypatch):
    def interrupted(config, resume, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", interrupted)
    status, _, err = run(capsys, "train", "--config", "synthetic/maskrcnn_small")
    assert status == 130 and err.strip() == "mrrcnn train: interrupted; nothing written is damaged"


def test_ctrl_c_during_training_is_reported_below_the_progress_bar(trained, capsys, tmp_path, monkeypatch):
    step = Trainer.run_step

    def interrupt_the_second(self, batch):
        if self.iteration == 1:
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(Trainer, "run_step", interrupt_the_second)
    argv = ["train", "--config", "synthetic/maskrcnn_small", *data_overrides(trained / "data"), *TINY]
    status, _, err = run(capsys, *argv, f"train.output_dir={tmp_path}")
    assert status == 130 and "train:  50%" in err
    assert err.split("\n")[-2:] == ["mrrcnn train: interrupted; nothing written is damaged", ""]


@pytest.fixture
def one_thread():
    """Models this small run faster on one thread than on several competing with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_export(trained, capsys, tmp_path, monkeypatch, one_thread):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    # An untrained MR R-CNN: its detections score about 1 / num_classes, above the 0.05 threshold.
    config = load_config(CONFIGS / "mrrcnn_small.yaml", ["model.base_weights=null", *TINY[:2]])
    torch.manual_seed(0)
    weights = tmp_path / "mrrcnn.pth"
    save_checkpoint(weights, {"model": build_model(**config["model"]).state_dict(), "config": config})
    out = tmp_path / "model.onnx"
    argv = ["export", "--weights", weights, "--format", "onnx", "--out", out, "--check", "model.alpha=0.5"]
    status, printed, _ = run(capsys, *argv)
    assert status == 0 and out.is_file()
    first, *checks = printed.splitlines()
    assert first.startswith(f"{out}: onnx, alpha 0.5; one image Tensor[3, H, W]")
    assert [line.split(":")[0] for line in checks] == ["check 64x64", "check 64x48", "check 96x96"]
    assert all("detections agree with PyTorch" in line and " 0 detections" not in line for line in checks)

    # The Mask R-CNN that `mrrcnn train` wrote, as TorchScript.
    trained_weights = trained / "run/final.pth"
    argv = ["export", "--weights", trained_weights, "--format", "torchscript", "--out", tmp_path / "m.pt"]
    status, printed, _ = run(capsys, *argv, "--check")
    assert status == 0 and printed.startswith(f"{tmp_path / 'm.pt'}: torchscript; one image")

    # A file that disagrees with PyTorch is an error, and is not written.
    load_exported = export.load_exported

    def one_detection_short(path, fmt):
        detector = load_exported(path, fmt)
        return lambda image: {k: v[1:] for k, v in detector(image).items()}

    monkeypatch.setattr(export, "load_exported", one_detection_short)
    argv = [
        "export",
        "--weights",
        weights,
        "--format",
        "torchscript",
        "--out",
        tmp_path / "bad.pt",
        "--check",
    ]
    assert_error(run(capsys, *argv), "export", "bad.pt (torchscript) on check image 1 (64x64)", "PyTorch")
    assert not (tmp_path / "bad.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "model.onnx", "mrrcnn.pth"]
    argv = ["export", "--weights", weights, "--format", "onnx", "--out", out, "--opset", "9"]
    assert_error(run(capsys, *argv), "export", "opset must be an integer in 18..21 for onnx")
    argv = ["export", "--weights", weights, "--format", "exported-program", "--out", tmp_path / "m.pte"]
    assert_error(run(capsys, *argv), "export", "m.pte: an exported program's file name ends in .pt2")


def test_export_size_beyond_the_machine_is_refused_before_allocating(capsys, tmp_path):
    config = load_config(CONFIGS / "maskrcnn_small.yaml", TINY[:2])
    weights = tmp_path / "maskrcnn.pth"
    save_checkpoint(weights, {"model": build_model(**config["model"]).state_dict(), "config": config})
    argv = ["export", "--weights", weights, "--format", "onnx", "--out", tmp_path / "m.onnx"]
    result = run(capsys, *argv, "--image-size", 100000, 100000)
    assert_error(result, "export", "image_size 100000x100000: tracing holds the image and up to 100 masks")
    assert not (tmp_path / "m.onnx").exists()


def test_demo(capsys, tmp_path, monkeypatch, caplog):
    # The synthetic configs, shrunk so that the demo runs in seconds.
    for name in ("maskrcnn_small.yaml", "maskrcnn_small_finetune.yaml", "mrrcnn_small.yaml"):
        (tmp_path / name).write_text(
            f"_base_: {CONFIGS / name}\n"
            "model: {min_size: 64, max_size: 64}\n"
            "data: {workers: 0}\n"
            "train: {batch_size: 2}\n"
        )
    monkeypatch.setattr(demo, "CONFIGS", tmp_path)
    titles = []

    def side_by_side(images, captions, columns):
        titles.extend(captions)
        return visualize.side_by_side(images, captions, columns)

    monkeypatch.setattr(demo, "side_by_side", side_by_side)
    out_dir = tmp_path / "demo"
    argv = ["demo", "--out", out_dir, "--train-images", 3, "--val-images", 2, "--image-size", 64]
    argv += ["--iterations", 2, "--finetune-iterations", 1, "--comparison-images", 2]
    status, out, _ = run(capsys, *argv, "NOPROGRESS")

    assert status == 0
    assert out.startswith("| metric | Mask R-CNN | Mask R-CNN +ft | MR R-CNN |")
    for row in ("bbox/AP", "segm/AP75", "huddled/segm/AP", "isolated/bbox/AP50"):
        assert f"| {row} |" in out
    assert "| bbox/APs |" not in out
    assert out.split("\n|---")[0] in (out_dir / "results.md").read_text()
    for run_dir in ("maskrcnn", "maskrcnn_finetune", "mrrcnn"):
        assert torch.load(out_dir / run_dir / "final.pth", weights_only=True)["iteration"] in (1, 2)
        assert (out_dir / run_dir / "metrics_val.json").is_file()
    with Image.open(out_dir / "comparison.png") as figure:
        # Two rows (images) of two columns (models), each picture drawn 3x larger than the 64 px image.
        assert figure.width >= 2 * 3 * 64 and figure.height >= 2 * 3 * 64
    # Two iterations train nothing: the table and the figure say so rather than show zeros and empty images.
    said = (
        "Mask R-CNN, Mask R-CNN +ft, MR R-CNN detected nothing (no detection scoring 0.5 or more on the val"
    )
    assert said in out and said in (out_dir / "results.md").read_text()
    assert (
        "2 + 1 iterations on 3 images are too few to train a detector, and these numbers mean nothing" in out
    )
    assert len(titles) == 4
    assert all(t.endswith("; nothing detected (too little training to mean anything)") for t in titles)

    caplog.set_level(logging.INFO, logger="mrrcnn")
    mtime = (out_dir / "mrrcnn" / "final.pth").stat().st_mtime_ns
    assert run(capsys, *argv, "NOPROGRESS")[0] == 0
    assert (out_dir / "mrrcnn" / "final.pth").stat().st_mtime_ns == mtime
    assert sum("exists, not training again" in r.getMessage() for r in caplog.records) == 3


def test_bad_input(trained, capsys, tmp_path, monkeypatch):
    config = CONFIGS / "maskrcnn_small.yaml"
    assert_error(run(capsys, "train", "--config", tmp_path / "nope.yaml"), "train", "nope.yaml")
    assert_error(run(capsys, "train", "--config", config, "train.lr"), "train", "'train.lr'")
    assert_error(run(capsys, "train", "--config", config, "trian.lr=1"), "train", "'trian'")
    assert_error(run(capsys, "eval", "--weights", tmp_path / "none.pth"), "eval", "none.pth")

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((trained / "run/final.pth").read_bytes()[:5000])
    assert_error(run(capsys, "eval", "--weights", truncated), "eval", "truncated.pth")
    assert_error(
        run(capsys, "predict", "--weights", truncated, trained / "data/val", "--out", tmp_path), "predict"
    )

    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    weights = trained / "run/final.pth"
    assert_error(
        run(capsys, "predict", "--weights", weights, broken, "--out", tmp_path), "predict", "broken.png"
    )
    assert_error(run(capsys, "eval", "--weights", weights, "--split", "test"), "eval", "data.test")
    assert_error(run(capsys, "eval", "--weights", weights, "--device", "tpu"), "eval", "'tpu'")

    monkeypatch.setattr(demo, "CONFIGS", tmp_path / "no_configs")
    assert_error(
        run(capsys, "demo", "--out", tmp_path / "demo", "--train-images", 1, "--val-images", 1),
        "demo",
        "no_configs",
    )
    assert_error(run(capsys, "demo", "--out", tmp_path / "demo", "--iterations", 0), "demo", "iterations")

    def diverge(config, resume, progress):
        raise FloatingPointError("non-finite loss at iteration 2")

    monkeypatch.setattr(cli, "train", diverge)
    status, _, err = run(capsys, "train", "--config", config)
    assert status == 1 and err.strip() == "mrrcnn train: error: non-finite loss at iteration 2"

    with pytest.raises(SystemExit) as exit_info:
        main(["eval"])
    assert exit_info.value.code == 2
    assert "--weights" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_help_gives_examples_that_apply_to_the_command(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "train." not in capsys.readouterr().out


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="nope.yaml"):
        main(["train", "--config", str(tmp_path / "nope.yaml"), "--debug"])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["train", "--config", "c.yaml", "train.lr=0.1", "--resume", "train.seed=3"],
            ["train.lr=0.1", "train.seed=3"],
        ),
        (["eval", "--weights", "w.pth", "--split", "val", "model.alpha=2"], ["model.alpha=2"]),
        (
            ["eval", "model.alpha=2", "--weights", "w.pth", "eval.tile_size=512"],
            ["model.alpha=2", "eval.tile_size=512"],
        ),
        (
            ["predict", "--weights", "w.pth", "img", "--out", "o", "model.min_size=512"],
            ["model.min_size=512"],
        ),
        (
            ["export", "--weights", "w.pth", "--format", "onnx", "--out", "o.onnx", "model.alpha=0.5"],
            ["model.alpha=0.5"],
        ),
    ],
    ids=["train", "eval", "eval-first", "predict", "export"],
)
def test_overrides_are_accepted_anywhere(argv, expected):
    args = cli._parse(cli.build_parser(), argv)
    overrides = [a for a in getattr(args, "inputs", []) if cli._OVERRIDE.match(a)] + args.overrides
    assert overrides == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["synth", "out", "model.alpha=1"],
        ["convert", "i", "l", "o", "data.workers=0"],
        ["demo", "eval.batch_size=2"],
    ],
    ids=["synth", "convert", "demo"],
)
def test_commands_without_a_config_refuse_overrides(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli._parse(cli.build_parser(), argv)
    assert exit_info.value.code == 2
    assert f"mrrcnn {argv[0]}: error: {argv[0]} reads no configuration" in capsys.readouterr().err


def test_unknown_arguments_are_still_errors(capsys):
    with pytest.raises(SystemExit):
        cli._parse(cli.build_parser(), ["eval", "--weights", "w.pth", "--splt", "val"])
    assert "mrrcnn eval: error: unrecognized arguments: --splt" in capsys.readouterr().err
