import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mrrcnn.data import CLASSES, make_synthetic
from mrrcnn.engine.checkpoint import load_checkpoint

SCRIPT = """
import sys
from mrrcnn.config import load_config
from mrrcnn.engine.train import train
train(load_config(sys.argv[1], sys.argv[3:]), resume=sys.argv[2] == "resume", progress=False)
"""


def can_open_local_ports() -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
    except OSError:
        return False
    return True


def torchrun(tmp: Path, *args: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # One thread per process: the two processes share the machine. train.device=cpu pins them to the CPU
    # (and gloo) on a GPU host too.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, str(tmp / "script.py"), str(tmp / "config.yaml"), *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


@pytest.mark.skipif(not can_open_local_ports(), reason="cannot open a local TCP port for the process group")
def test_two_process_gloo_training_and_resume(tmp_path):
    make_synthetic(tmp_path / "data", 6, 2, image_size=64)
    (tmp_path / "script.py").write_text(SCRIPT)
    data = tmp_path / "data"
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump(
            {
                # refine_reg off: a refining head without gradient, which DDP must be told to expect.
                "model": {"name": "mrrcnn_small", "num_classes": len(CLASSES) + 1, "refine_reg": False},
                "data": {
                    "train": {
                        "images": str(data / "train"),
                        "annotations": str(data / "annotations/train.json"),
                    },
                    "workers": 0,
                },
                "train": {
                    "output_dir": str(tmp_path / "run"),
                    "batch_size": 1,
                    "warmup_iters": 1,
                    "device": "cpu",
                },
            }
        )
    )
    fast = [
        "model.min_size=64",
        "model.max_size=64",
        "model.rpn_pre_nms_top_n_train=128",
        "model.rpn_post_nms_top_n_train=64",
        "model.box_batch_size_per_image=32",
    ]
    torchrun(tmp_path, "fresh", *fast, "train.iterations=2")
    run = tmp_path / "run"
    last = load_checkpoint(run / "last.pth")
    assert last["world_size"] == 2 and len(last["rng"]) == 2
    assert last["data_position"] == 2 * 2  # iterations x processes x images per process
    assert load_checkpoint(run / "final.pth")["iteration"] == 2

    torchrun(tmp_path, "resume", *fast, "train.iterations=3")
    assert load_checkpoint(run / "last.pth")["data_position"] == 3 * 2
    assert load_checkpoint(run / "final.pth")["iteration"] == 3
