"""Training: SGD with linear warmup and step decay, AMP on GPU, DDP under ``torchrun``, exact resume.

Exact resume: a run interrupted after k iterations and resumed from ``last.pth`` ends with the same
parameters as one that was not interrupted (bit for bit on CPU; some GPU kernels are not deterministic).
The checkpoint holds the model, optimizer, scheduler and AMP scaler states, each process's RNG states
(torchvision's anchor and RoI samplers draw from torch's) and the position in the data. The data depend
on nothing else: the sample order is a function of ``(seed, epoch)`` (:class:`_SampleStream`) and the
augmentation of a sample a function of ``(seed, epoch, index)`` (:class:`_SeededSamples`), never of the
DataLoader's workers or of how far they had read ahead.
"""

from __future__ import annotations

import bisect
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ..config import DEFAULTS, dump_config
from ..data import CocoDetection, Compose, RandomHorizontalFlip, collate_fn
from ..models import build_model
from . import distributed as du
from .checkpoint import load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

# train keys holding counts, with their smallest value. eval_every=0: no evaluation during training;
# checkpoint_every=0: last.pth at the end only.
_COUNTS = {
    "iterations": 1,
    "batch_size": 1,
    "warmup_iters": 0,
    "checkpoint_every": 0,
    "eval_every": 0,
    "log_every": 1,
    "seed": 0,
}
_RATES = ("lr", "momentum", "weight_decay", "warmup_factor", "gamma")
# What a last.pth holds beyond a final.pth's model, config, categories and iteration.
_RESUME_KEYS = {"optimizer", "scheduler", "data_position", "num_skipped_images", "world_size", "rng"}


def _mix(*keys: int) -> int:
    """A 32-bit seed from non-negative integers; nearby keys give unrelated streams."""
    return int(np.random.SeedSequence(keys).generate_state(1)[0])


class _SampleStream(Sampler[tuple[int, int]]):
    """This process's share of an endless stream of ``(epoch, index)`` sample keys.

    The stream runs through permutations of ``range(size)``, that of epoch ``e`` drawn from
    ``(seed, e)``. Process ``rank`` reads stream positions ``start + rank + k * world_size``; ``start``
    counts the samples all processes have taken so far, so the stream resumes where it stopped, even on
    another number of processes.
    """

    def __init__(self, size: int, seed: int, start: int, rank: int, world_size: int) -> None:
        self.size, self.seed, self.start, self.rank, self.world_size = size, seed, start, rank, world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position, epoch, order = self.start + self.rank, -1, []
        while True:
            if position // self.size != epoch:
                epoch = position // self.size
                generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
                order = torch.randperm(self.size, generator=generator).tolist()
            yield epoch, order[position % self.size]
            position += self.world_size


class _SeededSamples(Dataset):
    """``dataset`` read by ``(epoch, index)`` keys, its samples augmented by ``transforms`` drawing from
    torch's RNG seeded with ``(seed, epoch, index)``; ``None`` (an unreadable image) passes through."""

    def __init__(self, dataset: CocoDetection, transforms: Callable | None, seed: int) -> None:
        self.dataset, self.transforms, self.seed = dataset, transforms, seed

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, dict[str, Any]] | None:
        epoch, index = key
        sample = self.dataset[index]
        if sample is None or self.transforms is None:
            return sample
        # With workers=0 this runs in the main process, whose RNG the model's samplers use: fork it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(self.seed, epoch, index))
            return self.transforms(*sample)


def _check_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as plain YAML data (what the checkpoint stores), its data and train sections checked."""
    try:
        config = yaml.safe_load(dump_config(config))
    except yaml.YAMLError as e:
        raise ValueError(f"the configuration holds values that YAML cannot store: {e}") from e
    for section in ("data", "train"):
        missing = sorted(set(DEFAULTS[section]) - set(config.get(section) or {}))
        if missing:
            raise ValueError(
                f"config section {section!r} lacks {missing}; mrrcnn.config.load_config fills them in"
            )
    train, data = config["train"], config["data"]
    for key, low in _COUNTS.items():
        value = train[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"train.{key} must be an integer >= {low}, got {value!r}")
    for key in _RATES:
        value = train[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
            raise ValueError(f"train.{key} must be a finite number >= 0, got {value!r}")
    milestones = train["milestones"]
    if not isinstance(milestones, list) or any(not isinstance(m, int) for m in milestones):
        raise ValueError(f"train.milestones must be a list of iteration numbers, got {milestones!r}")
    if milestones != sorted(set(milestones)):
        raise ValueError(f"train.milestones must increase, got {milestones!r}")
    if not isinstance(data["workers"], int) or data["workers"] < 0:
        raise ValueError(f"data.workers must be an integer >= 0, got {data['workers']!r}")
    if not isinstance(data["hflip"], (int, float)) or not 0 <= data["hflip"] <= 1:
        raise ValueError(f"data.hflip must be a probability in [0, 1], got {data['hflip']!r}")
    for split in ("train", "val") if train["eval_every"] else ("train",):
        if not isinstance(data.get(split), dict) or not {"images", "annotations"} <= data[split].keys():
            raise ValueError(
                f"data.{split} must be a mapping with 'images' and 'annotations', got {data.get(split)!r}"
            )
    return config


def _check_resumable(checkpoint: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """Refuse to resume from a checkpoint that is not a ``last.pth``, or when the run's configuration
    changed in more than ``train.iterations``."""
    missing = sorted((_RESUME_KEYS | {"model", "config", "iteration"}) - checkpoint.keys())
    if missing:
        raise ValueError(f"cannot resume from {path}: it lacks {missing} (is it a last.pth of mrrcnn train?)")

    def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(tree, dict) or not tree:
            return {prefix: tree}
        return {
            k: v
            for key, value in tree.items()
            for k, v in flat(value, f"{prefix}.{key}" if prefix else str(key)).items()
        }

    saved, now = flat(checkpoint["config"]), flat(config)
    changed = [
        f"{key}: {saved.get(key, '<unset>')!r} -> {now.get(key, '<unset>')!r}"
        for key in sorted(saved.keys() | now.keys())
        if key != "train.iterations" and saved.get(key) != now.get(key)
    ]
    if changed:
        raise ValueError(
            f"cannot resume from {path}: the configuration changed in more than train.iterations "
            f"({'; '.join(changed)}); resume with the saved configuration, or start a new output_dir"
        )
    if checkpoint["iteration"] > config["train"]["iterations"]:
        raise ValueError(
            f"cannot resume from {path}: it is at iteration {checkpoint['iteration']}, past "
            f"train.iterations={config['train']['iterations']}"
        )


def _rng_state(device: torch.device) -> dict[str, Any]:
    """The RNG states training draws from, as tensors and lists (``weights_only``-loadable)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train(config: dict[str, Any], resume: bool = False, progress: bool = True) -> Path:
    """Train ``config["model"]`` on ``config["data"]["train"]`` with the recipe ``config["train"]``.

    Under ``torchrun`` every process runs this; each reads ``train.batch_size`` images per iteration, and
    rank 0 writes to ``train.output_dir``: ``config.yaml``, ``last.pth`` (everything to resume, every
    ``checkpoint_every`` iterations and at the end), ``final.pth`` (``model``, ``config``, ``categories``,
    ``iteration``) and TensorBoard events in ``tb/`` (the losses, their sum and the learning rate every
    ``log_every`` iterations; COCO AP under ``AP/`` every ``eval_every`` iterations). Every process reads
    ``last.pth`` to resume, so on several nodes ``output_dir`` must be on a file system they share.

    Args:
        config: a configuration as :func:`mrrcnn.config.load_config` returns it.
        resume: continue from ``output_dir/last.pth``, exactly as if never interrupted; only
            ``train.iterations`` may differ from the saved configuration.
        progress: show a progress bar (rank 0); otherwise log a line every ``log_every`` iterations.

    Returns:
        The path of ``final.pth``.

    Raises:
        ValueError: a bad configuration, or a checkpoint that cannot be resumed.
        FloatingPointError: a loss became NaN or infinite; ``last.pth`` keeps the last good state.
    """
    config = _check_config(config)
    cfg, data_cfg = config["train"], config["data"]
    output_dir = Path(cfg["output_dir"])
    last_path, final_path = output_dir / "last.pth", output_dir / "final.pth"
    created_group = du.init_distributed()
    writer = None
    try:
        rank, world, device = du.rank(), du.world_size(), du.device()
        main = du.is_main_process()
        checkpoint = None
        if resume:
            checkpoint = load_checkpoint(last_path)
            _check_resumable(checkpoint, config, last_path)
        elif main and last_path.exists():
            logger.warning("%s exists and will be overwritten (pass resume=True to continue it)", last_path)

        seed = cfg["seed"]
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        model_without_ddp = build_model(**config["model"]).to(device)
        # Same initial weights on every process, different RoI sampling draws.
        torch.manual_seed(_mix(seed, rank))

        train_data = data_cfg["train"]
        dataset = CocoDetection(
            train_data["images"], train_data["annotations"], skip_bad=data_cfg["skip_bad"]
        )
        if len(dataset) == 0:
            raise ValueError(f"{train_data['annotations']}: no training images")
        num_classes = model_without_ddp.roi_heads.box_predictor.cls_score.out_features
        if dataset.num_classes > num_classes:
            raise ValueError(
                f"{train_data['annotations']}: category ids go up to {dataset.num_classes - 1}, but the "
                f"model has num_classes={num_classes} (ids must be below it; 0 is the background)"
            )

        params = [p for p in model_without_ddp.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
        )

        def lr_factor(iteration: int) -> float:
            warmup = 1.0
            if iteration < cfg["warmup_iters"]:
                alpha = iteration / cfg["warmup_iters"]
                warmup = cfg["warmup_factor"] * (1 - alpha) + alpha
            return warmup * cfg["gamma"] ** bisect.bisect_right(cfg["milestones"], iteration)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        use_amp = cfg["amp"] and device.type == "cuda"
        if cfg["amp"] and not use_amp and main:
            logger.info("train.amp is on, but CUDA is not available: training in float32")
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

        start, position, skipped = 0, 0, 0
        if checkpoint is not None:
            model_without_ddp.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            if use_amp and "scaler" in checkpoint:
                scaler.load_state_dict(checkpoint["scaler"])
            start, position = checkpoint["iteration"], checkpoint["data_position"]
            skipped = checkpoint["num_skipped_images"]

        model = model_without_ddp
        if world > 1:
            # MR R-CNN with refine_cls or refine_reg off has a refining head without a loss, hence without
            # gradients: DDP must then look for unused parameters every step (an extra autograd graph
            # traversal, which it warns about when nothing is found). Otherwise every parameter is used.
            heads = model_without_ddp.roi_heads
            model = DistributedDataParallel(
                model_without_ddp,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=not (
                    getattr(heads, "refine_cls", True) and getattr(heads, "refine_reg", True)
                ),
            )

        batch_size = cfg["batch_size"]
        transforms = Compose([RandomHorizontalFlip(data_cfg["hflip"])]) if data_cfg["hflip"] > 0 else None
        loader = DataLoader(
            _SeededSamples(dataset, transforms, seed),
            batch_size=batch_size,
            sampler=_SampleStream(len(dataset), seed, position, rank, world),
            num_workers=data_cfg["workers"],
            collate_fn=collate_fn,
            pin_memory=device.type == "cuda",
            # iter() draws the workers' base seed from this generator rather than from the global RNG.
            generator=torch.Generator(),
        )
        batches = iter(loader)

        if main:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / "config.yaml").write_text(dump_config(config))
            writer = SummaryWriter(str(output_dir / "tb"), purge_step=start)
        if checkpoint is not None:
            if checkpoint["world_size"] == world:
                _set_rng_state(checkpoint["rng"][rank], device)
            else:
                torch.manual_seed(_mix(seed, rank, start))
                if main:
                    logger.warning(
                        "resuming on %d processes a run saved on %d: the data continue in order, but the RoI "
                        "sampling draws differ from those of an uninterrupted run",
                        world,
                        checkpoint["world_size"],
                    )
        if main:
            logger.info(
                "training %s (%.2fM trainable parameters) on %d image(s), iterations %d to %d, "
                "%d process(es) x %d image(s) per iteration, on %s",
                config["model"]["name"],
                sum(p.numel() for p in params) / 1e6,
                len(dataset),
                start,
                cfg["iterations"],
                world,
                batch_size,
                device,
            )

        def save_last(done: int) -> None:
            # Every process's RNG states; gathering them is a collective, so every process calls this.
            rng = [_rng_state(device)]
            if world > 1:
                rng = [None] * world
                dist.all_gather_object(rng, _rng_state(device))
            if main:
                save_checkpoint(
                    last_path,
                    {
                        "model": model_without_ddp.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        **({"scaler": scaler.state_dict()} if use_amp else {}),
                        "iteration": done,
                        "data_position": position,
                        "num_skipped_images": skipped,
                        "world_size": world,
                        "rng": rng,
                        "config": config,
                        "categories": dataset.categories,
                    },
                )
                logger.debug("saved %s at iteration %d", last_path, done)

        model.train()
        sums: dict[str, float] = defaultdict(float)
        steps = 0
        saved_at = start if resume else None
        started = time.perf_counter()
        bar = tqdm(
            total=cfg["iterations"], initial=start, desc="train", unit="it", disable=not (progress and main)
        )
        for done in range(start + 1, cfg["iterations"] + 1):
            images, targets = next(batches)
            position += batch_size * world
            empty = len(images) == 0
            if data_cfg["skip_bad"]:
                counts = torch.tensor([batch_size - len(images), int(empty)], device=device)
                if world > 1:
                    dist.all_reduce(counts)
                skipped += int(counts[0])
                # Processes must step together: one without images holds every process back.
                empty = bool(counts[1])
            lr = optimizer.param_groups[0]["lr"]
            if empty:
                if main:
                    logger.warning("iteration %d: no image of a batch could be read; no step", done)
            else:
                images = [image.to(device, non_blocking=True) for image in images]
                targets = [
                    {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()}
                    for t in targets
                ]
                with torch.autocast(device.type, enabled=use_amp):
                    losses = model(images, targets)
                # Averaged over processes, so that every process sees the same values and stops together.
                values = torch.stack([v.detach().float() for v in losses.values()])
                if world > 1:
                    dist.all_reduce(values)
                    values /= world
                values = dict(zip(losses, values.tolist()))
                total = sum(values.values())
                bad = {k: v for k, v in values.items() if not math.isfinite(v)}
                if bad:
                    kept = (
                        f"{last_path} (iteration {saved_at}) is kept"
                        if saved_at is not None
                        else "no checkpoint was written"
                    )
                    raise FloatingPointError(
                        f"non-finite loss at iteration {done}: "
                        f"{', '.join(f'{k}={v}' for k, v in bad.items())}; training stopped and {kept}. "
                        "A lower train.lr or a longer warmup (train.warmup_iters) may help."
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(sum(losses.values())).backward()
                scaler.step(optimizer)
                scaler.update()
                for k, v in values.items():
                    sums[k] += v
                sums["total"] += total
                steps += 1
                bar.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.2e}", refresh=False)
            scheduler.step()
            bar.update()

            if done % cfg["log_every"] == 0 and steps:
                means = {k: v / steps for k, v in sums.items()}
                if writer is not None:
                    for k, v in means.items():
                        writer.add_scalar(f"loss/{k}", v, done)
                    writer.add_scalar("lr", lr, done)
                if not progress and main:
                    eta = (time.perf_counter() - started) / (done - start) * (cfg["iterations"] - done)
                    logger.info(
                        "iteration %d/%d  %s  lr %.3e  eta %s",
                        done,
                        cfg["iterations"],
                        "  ".join(f"{k} {v:.4f}" for k, v in means.items()),
                        lr,
                        timedelta(seconds=round(eta)),
                    )
                sums.clear()
                steps = 0
            if cfg["checkpoint_every"] and done % cfg["checkpoint_every"] == 0:
                save_last(done)
                saved_at = done
            if cfg["eval_every"] and done % cfg["eval_every"] == 0:
                # Imported here: training without evaluation does not need the evaluation stack.
                from .evaluate import evaluate_model

                # Evaluation must not move the RNG streams that training resumes with.
                with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
                    metrics = evaluate_model(model_without_ddp, config, output_dir=None, progress=False)
                if main:
                    logger.info(
                        "iteration %d: %s", done, "  ".join(f"{k} {v:.2f}" for k, v in metrics.items())
                    )
                    for k, v in metrics.items():
                        writer.add_scalar(f"AP/{k}", v, done)
        bar.close()
        # Stops the workers, which read ahead.
        del batches

        if saved_at != cfg["iterations"]:
            save_last(cfg["iterations"])
        if main:
            save_checkpoint(
                final_path,
                {
                    "model": model_without_ddp.state_dict(),
                    "config": config,
                    "categories": dataset.categories,
                    "iteration": cfg["iterations"],
                },
            )
            if skipped:
                logger.warning(
                    "%d training image(s) could not be read and were skipped (data.skip_bad); "
                    "the warnings above name them",
                    skipped,
                )
            logger.info("saved %s", final_path)
        du.barrier()
        return final_path
    finally:
        if writer is not None:
            writer.close()
        if created_group:
            du.cleanup()
