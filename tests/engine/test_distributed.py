import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mrrcnn.data import CLASSES, make_synthetic
from mrrcnn.engine.checkpoint import load_checkpoint

SCRIPT = """
import sys
from mrrcnn.config import load_config
from mrrcnn.engine.train import train
train(load_config(sys.argv[1], sys.argv[3:]), resume=sys.argv[2] == "resume", progress=False)
"""

# `mrrcnn train ARGS...` whose rank 1 kills itself with SIGKILL before iteration KILL_AT + 1 of torchrun's
# first attempt only, as a preempted GPU's process dies: no chance to clean up or save.
KILLED_SCRIPT = """
import os, signal, sys
from mrrcnn.cli import main
from mrrcnn.engine.train import Trainer

kill_at = int(sys.argv[1])
if os.environ["TORCHELASTIC_RESTART_COUNT"] == "0" and os.environ["RANK"] == "1":
    step = Trainer.run_step

    def run_step(self, batch):
        if self.iteration == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self, batch)

    Trainer.run_step = run_step
sys.exit(main(sys.argv[2:]))
"""

FAST = [
    "model.min_size=64",
    "model.max_size=64",
    "model.rpn_pre_nms_top_n_train=128",
    "model.rpn_post_nms_top_n_train=64",
    "model.box_batch_size_per_image=32",
]


def can_open_local_ports() -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not can_open_local_ports(), reason="cannot open a local TCP port for the process group"
)


def torchrun(script: Path, *args: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *launcher]
    # One thread per process: the two processes share the machine. train.device=cpu pins them to the CPU
    # (and gloo) on a GPU host too.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, str(script), *args], check=False, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """A config of a tiny two-process CPU run; each test sets its own ``train.output_dir``."""
    tmp = tmp_path_factory.mktemp("distributed")
    data = tmp / "data"
    make_synthetic(data, 6, 2, image_size=64)
    (tmp / "script.py").write_text(SCRIPT)
    (tmp / "killed.py").write_text(KILLED_SCRIPT)
    path = tmp / "config.yaml"
    path.write_text(
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
                "train": {"batch_size": 1, "warmup_iters": 1, "device": "cpu"},
            }
        )
    )
    return path


def test_two_process_gloo_training_and_resume(config, tmp_path):
    script, run = config.parent / "script.py", tmp_path / "run"
    args = [str(config), *FAST, f"train.output_dir={run}"]
    torchrun(script, args[0], "fresh", *args[1:], "train.iterations=2")
    last = load_checkpoint(run / "last.pth")
    assert last["world_size"] == 2 and len(last["rng"]) == 2
    assert last["data_position"] == 2 * 2  # iterations x processes x images per process
    assert load_checkpoint(run / "final.pth")["iteration"] == 2

    torchrun(script, args[0], "resume", *args[1:], "train.iterations=3")
    assert load_checkpoint(run / "last.pth")["data_position"] == 3 * 2
    assert load_checkpoint(run / "final.pth")["iteration"] == 3


def test_a_killed_worker_is_restarted_by_torchrun_and_resumes_exactly(config, tmp_path):
    """torchrun --max-restarts restarts both processes when one dies; with --resume the restarted run
    continues from last.pth and ends with the parameters of a run that was never interrupted."""
    script = config.parent / "killed.py"
    recipe = ["--config", str(config), "--resume", "--no-progress", *FAST, "train.iterations=4"]
    recipe += ["train.checkpoint_every=2"]
    straight = torchrun(script, "-1", "train", *recipe, f"train.output_dir={tmp_path / 'straight'}")
    assert "starting fresh" in straight.stderr
    launcher = ("--max-restarts=2", "--monitor-interval=0.1")
    killed = torchrun(
        script, "3", "train", *recipe, f"train.output_dir={tmp_path / 'killed'}", launcher=launcher
    )
    assert f"resuming from {tmp_path / 'killed' / 'last.pth'} at iteration 2" in killed.stderr
    a, b = (load_checkpoint(tmp_path / run / "final.pth")["model"] for run in ("straight", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
