"""Training: SGD with linear warmup and step decay, AMP on GPU, DDP under ``torchrun``, exact resume.

:class:`Trainer` holds everything a run's state is made of (model, optimizer, scheduler, AMP scaler, data
position, RNG states) and :meth:`Trainer.state_dict` is the one place that says what ``last.pth`` holds;
:meth:`Trainer.run_step` is one iteration; :func:`train` is the driver that resumes, steps, logs,
checkpoints and evaluates.

Exact resume: a run interrupted after k iterations and resumed from ``last.pth`` ends with the same
parameters as one that was not interrupted (bit for bit on CPU; some GPU kernels are not deterministic).
The data depend on nothing but the seed: the sample order is a function of ``(seed, epoch)``
(:class:`_SampleStream`) and the augmentation of a sample a function of ``(seed, epoch, index)``
(:class:`_SeededSamples`), never of the DataLoader's workers or of how far they had read ahead.
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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ..config import dump_config, validate_config
from ..data import CocoDetection, Compose, RandomCrop, RandomHorizontalFlip
from ..models import build_model
from . import distributed as du
from .checkpoint import load_checkpoint, remove_stale_temporaries, run_lock, save_checkpoint

logger = logging.getLogger(__name__)

# What a last.pth holds beyond a final.pth's model, config, categories and iteration.
RESUME_KEYS = ("optimizer", "scheduler", "data_position", "world_size", "rng")


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
    torch's RNG seeded with ``(seed, epoch, index)``; an unreadable image (``None``) comes back as its
    index, so that the trainer counts images rather than reads."""

    def __init__(self, dataset: CocoDetection, transforms: Callable | None, seed: int) -> None:
        self.dataset, self.transforms, self.seed = dataset, transforms, seed

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, dict[str, Any]] | int:
        epoch, index = key
        sample = self.dataset[index]
        if sample is None:
            return index
        if self.transforms is None:
            return sample
        # With workers=0 this runs in the main process, whose RNG the model's samplers use: fork it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(self.seed, epoch, index))
            return self.transforms(*sample)


def _collate(batch: list[tuple[Tensor, dict[str, Any]] | int]) -> tuple[list[Tensor], list[dict], list[int]]:
    """Images, targets, and the dataset indices of the batch's unreadable images."""
    samples = [s for s in batch if not isinstance(s, int)]
    return [s[0] for s in samples], [s[1] for s in samples], [s for s in batch if isinstance(s, int)]


def lr_factor(cfg: dict[str, Any], iteration: int) -> float:
    """The learning rate's multiplier at ``iteration``: linear warmup, then ``gamma`` at each milestone."""
    warmup = 1.0
    if iteration < cfg["warmup_iters"]:
        alpha = iteration / cfg["warmup_iters"]
        warmup = cfg["warmup_factor"] * (1 - alpha) + alpha
    return warmup * cfg["gamma"] ** bisect.bisect_right(cfg["milestones"], iteration)


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


def _training_data(config: dict[str, Any], num_classes: int) -> CocoDetection:
    data = config["data"]
    if data["train"] is None:
        raise ValueError("data.train must name the training images and annotations, got null")
    dataset = CocoDetection(
        data["train"]["images"],
        data["train"]["annotations"],
        skip_bad=data["skip_bad"],
        intensity=data["intensity"],
        percentiles=data["percentiles"],
    )
    if len(dataset) == 0:
        raise ValueError(f"{data['train']['annotations']}: no training images")
    if dataset.num_classes > num_classes:
        raise ValueError(
            f"{data['train']['annotations']}: category ids go up to {dataset.num_classes - 1}, but the "
            f"model has num_classes={num_classes} (ids must be below it; 0 is the background)"
        )
    _check_crop(data["crop_size"], dataset)
    return dataset


def _check_crop(crop_size: int, dataset: CocoDetection) -> None:
    """Refuse a crop larger than every training image: it would cut none of them, and the configuration
    would say crops where training saw whole images."""
    if not crop_size:
        return
    width = max(record["width"] for record in dataset.coco.imgs.values())
    height = max(record["height"] for record in dataset.coco.imgs.values())
    if crop_size > width and crop_size > height:
        raise ValueError(
            f"data.crop_size ({crop_size}) is larger than every training image (largest {width}x{height}); "
            "lower it or set 0"
        )


class Trainer:
    """Everything a training run's state is made of, and one iteration of it.

    Args:
        config: a validated configuration (:func:`mrrcnn.config.validate_config`).
        device: this process's device; under ``torch.distributed`` every process builds its own trainer.
    """

    def __init__(self, config: dict[str, Any], device: torch.device) -> None:
        cfg = config["train"]
        self.config, self.device = config, device
        self.rank, self.world = du.rank(), du.world_size()
        random.seed(cfg["seed"])
        np.random.seed(cfg["seed"])
        torch.manual_seed(cfg["seed"])
        self.model = build_model(**config["model"]).to(device)
        # Same initial weights on every process, different RoI sampling draws.
        torch.manual_seed(_mix(cfg["seed"], self.rank))
        self.dataset = _training_data(config, self.model.roi_heads.box_predictor.cls_score.out_features)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, partial(lr_factor, cfg))
        self.use_amp = cfg["amp"] and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.iteration, self.position = 0, 0
        self.unreadable: set[int] = set()
        self.wrapped = self.model
        if self.world > 1:
            # MR R-CNN with refine_cls or refine_reg off has a refining head without a loss, hence without
            # gradients: DDP must then look for unused parameters every step.
            heads = self.model.roi_heads
            self.wrapped = DistributedDataParallel(
                self.model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=not (
                    getattr(heads, "refine_cls", True) and getattr(heads, "refine_reg", True)
                ),
            )

    def state_dict(self) -> dict[str, Any]:
        """What ``last.pth`` holds: :data:`RESUME_KEYS`, the model, the iteration, the config and the
        categories. Gathers every process's RNG state and unreadable images: a collective under DDP."""
        rng, unreadable = [_rng_state(self.device)], [sorted(self.unreadable)]
        if self.world > 1:
            rng, unreadable = [None] * self.world, [None] * self.world
            dist.all_gather_object(rng, _rng_state(self.device))
            dist.all_gather_object(unreadable, sorted(self.unreadable))
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **({"scaler": self.scaler.state_dict()} if self.use_amp else {}),
            "iteration": self.iteration,
            "data_position": self.position,
            "unreadable_images": sorted({i for part in unreadable for i in part}),
            "world_size": self.world,
            "rng": rng,
            "config": self.config,
            "categories": self.dataset.categories,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`; RNG states only when saved on as many processes."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.use_amp and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.position = state["iteration"], state["data_position"]
        # Checkpoints of mrrcnn 0.1 counted reads rather than images: they start the count afresh.
        self.unreadable = set(state.get("unreadable_images", ()))

    def restore_rng(self, state: dict[str, Any]) -> None:
        """The RNG states of a :meth:`state_dict`; on another number of processes, fresh streams."""
        if state["world_size"] == self.world:
            _set_rng_state(state["rng"][self.rank], self.device)
            return
        torch.manual_seed(_mix(self.config["train"]["seed"], self.rank, self.iteration))
        if self.rank == 0:
            logger.warning(
                "resuming on %d processes a run saved on %d: the data continue in order, but the RoI "
                "sampling draws differ from those of an uninterrupted run",
                self.world,
                state["world_size"],
            )

    def batches(self) -> Iterator[tuple[list[Tensor], list[dict], list[int]]]:
        """This process's batches from the current data position on, forever."""
        data = self.config["data"]
        steps: list[Callable] = []
        if data["crop_size"]:
            steps.append(RandomCrop(data["crop_size"], data["crop_min_area"]))
        if data["hflip"] > 0:
            steps.append(RandomHorizontalFlip(data["hflip"]))
        transforms = Compose(steps) if steps else None
        batch_size = self.config["train"]["batch_size"]
        return iter(
            DataLoader(
                _SeededSamples(self.dataset, transforms, self.config["train"]["seed"]),
                batch_size=batch_size,
                sampler=_SampleStream(
                    len(self.dataset), self.config["train"]["seed"], self.position, self.rank, self.world
                ),
                num_workers=data["workers"],
                collate_fn=_collate,
                pin_memory=self.device.type == "cuda",
                # iter() draws the workers' base seed from this generator rather than from the global RNG.
                generator=torch.Generator(),
            )
        )

    def run_step(self, batch: tuple[list[Tensor], list[dict], list[int]]) -> dict[str, float] | None:
        """One iteration on ``batch``: losses (averaged over processes) and an optimizer step, or None when
        no process has an image (every image of a batch unreadable under ``data.skip_bad``)."""
        images, targets, unreadable = batch
        self.iteration += 1
        self.position += self.config["train"]["batch_size"] * self.world
        self.unreadable.update(unreadable)
        if self._must_skip(len(images) == 0):
            self.scheduler.step()
            return None
        images = [image.to(self.device, non_blocking=True) for image in images]
        targets = [
            {k: v.to(self.device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()}
            for t in targets
        ]
        with torch.autocast(self.device.type, enabled=self.use_amp):
            losses = self.wrapped(images, targets)
        # Averaged over processes, so that every process sees the same values and stops together.
        values = torch.stack([v.detach().float() for v in losses.values()])
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        values = dict(zip(losses, values.tolist()))
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            raise FloatingPointError(
                f"non-finite loss at iteration {self.iteration}: {', '.join(f'{k}={v}' for k, v in bad.items())}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(sum(losses.values())).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return values

    def _must_skip(self, empty: bool) -> bool:
        """Whether this iteration takes no step: some process has no image, and processes step together.
        Fails once every training image has proven unreadable."""
        if len(self.unreadable) == len(self.dataset):
            raise ValueError(
                f"none of the {len(self.dataset)} training images of {self.config['data']['train']['images']} "
                "could be read (data.skip_bad skipped them all; the warnings name each)"
            )
        if not self.config["data"]["skip_bad"]:
            return empty
        flag = torch.tensor([int(empty)], device=self.device)
        if self.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag)


class _LossMeter:
    """Means of the losses since the last :meth:`pop`."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.steps = 0

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] += v
        self.sums["total"] += sum(values.values())
        self.steps += 1

    def pop(self) -> dict[str, float]:
        means = {k: v / self.steps for k, v in self.sums.items()} if self.steps else {}
        self.sums.clear()
        self.steps = 0
        return means


def _log(
    trainer: Trainer, meter: _LossMeter, writer: SummaryWriter | None, lr: float, eta: float | None
) -> None:
    means = meter.pop()
    if not means:
        return
    if writer is not None:
        for k, v in means.items():
            writer.add_scalar(f"loss/{k}", v, trainer.iteration)
        writer.add_scalar("lr", lr, trainer.iteration)
    if eta is not None and trainer.rank == 0:
        logger.info(
            "iteration %d/%d  %s  lr %.3e  eta %s",
            trainer.iteration,
            trainer.config["train"]["iterations"],
            "  ".join(f"{k} {v:.4f}" for k, v in means.items()),
            lr,
            timedelta(seconds=round(eta)),
        )


def _evaluate(trainer: Trainer, writer: SummaryWriter | None) -> None:
    # Imported here: training without evaluation does not need the evaluation stack.
    from ..evaluation.evaluate import evaluate_model

    # Evaluation must not move the RNG streams that training resumes with.
    with torch.random.fork_rng(devices=[trainer.device.index] if trainer.device.type == "cuda" else []):
        metrics = evaluate_model(trainer.model, trainer.config, output_dir=None, progress=False)
    if trainer.rank == 0:
        logger.info(
            "iteration %d: %s", trainer.iteration, "  ".join(f"{k} {v:.2f}" for k, v in metrics.items())
        )
        for k, v in metrics.items():
            writer.add_scalar(f"AP/{k}", v, trainer.iteration)


def _check_resumable(state: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint that is not a ``last.pth``, or a configuration changed in more than
    ``train.iterations`` (and ``train.output_dir``, which may be spelled otherwise or moved, and
    ``data.workers``, which changes nothing the run computes)."""
    missing = sorted({*RESUME_KEYS, "model", "config", "iteration"} - state.keys())
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

    saved, now = flat(validate_config(state["config"])), flat(config)
    # The data depend on the seed alone, not on how many processes load them (_SampleStream).
    free = ("train.iterations", "train.output_dir", "data.workers")
    changed = [
        f"{key}: {saved.get(key, '<unset>')!r} -> {now.get(key, '<unset>')!r}"
        for key in sorted(saved.keys() | now.keys())
        if key not in free and saved.get(key) != now.get(key)
    ]
    if changed:
        raise ValueError(
            f"cannot resume from {path}: the configuration changed in more than train.iterations "
            f"({'; '.join(changed)}); resume with the saved configuration, or start a new output_dir"
        )
    if state["iteration"] > config["train"]["iterations"]:
        raise ValueError(
            f"cannot resume from {path}: it is at iteration {state['iteration']}, past "
            f"train.iterations={config['train']['iterations']}"
        )


def _fit(trainer: Trainer, output_dir: Path, writer: SummaryWriter | None, progress: bool) -> None:
    """Step ``trainer`` to ``train.iterations``, logging, checkpointing and evaluating as configured."""
    cfg = trainer.config["train"]
    start, last_path = trainer.iteration, output_dir / "last.pth"
    saved_at, meter, started = start or None, _LossMeter(), time.perf_counter()
    batches = trainer.batches()
    # Closed however the loop ends, so that an error or Ctrl-C is reported on a line of its own.
    with tqdm(
        total=cfg["iterations"],
        initial=start,
        desc="train",
        unit="it",
        disable=not (progress and trainer.rank == 0),
    ) as bar:
        while trainer.iteration < cfg["iterations"]:
            lr = trainer.optimizer.param_groups[0]["lr"]
            try:
                values = trainer.run_step(next(batches))
            except FloatingPointError as e:
                kept = (
                    f"{last_path} (iteration {saved_at}) is kept" if saved_at else "no checkpoint was written"
                )
                raise FloatingPointError(
                    f"{e}; training stopped and {kept}. A lower train.lr or a longer warmup "
                    "(train.warmup_iters) may help."
                ) from e
            if values is None:
                if trainer.rank == 0:
                    logger.warning(
                        "iteration %d: no image of a batch could be read; no step", trainer.iteration
                    )
            else:
                meter.add(values)
                bar.set_postfix(loss=f"{sum(values.values()):.3f}", lr=f"{lr:.2e}", refresh=False)
            bar.update()
            done = trainer.iteration
            if done % cfg["log_every"] == 0:
                eta = (
                    None
                    if progress
                    else (time.perf_counter() - started) / (done - start) * (cfg["iterations"] - done)
                )
                _log(trainer, meter, writer, lr, eta)
            if cfg["checkpoint_every"] and done % cfg["checkpoint_every"] == 0:
                _save(trainer, last_path)
                saved_at = done
            if cfg["eval_every"] and done % cfg["eval_every"] == 0:
                _evaluate(trainer, writer)
    if saved_at != cfg["iterations"]:
        _save(trainer, last_path)


def _save(trainer: Trainer, path: Path) -> None:
    state = trainer.state_dict()
    if trainer.rank == 0:
        save_checkpoint(path, state)
        logger.debug("saved %s at iteration %d", path, trainer.iteration)


def train(config: dict[str, Any], resume: bool = False, progress: bool = True) -> Path:
    """Train ``config["model"]`` on ``config["data"]["train"]`` with the recipe ``config["train"]``.

    Under ``torchrun`` every process runs this; each reads ``train.batch_size`` images per iteration, and
    rank 0 writes to ``train.output_dir``: ``config.yaml``, ``last.pth`` (:meth:`Trainer.state_dict`, every
    ``checkpoint_every`` iterations and at the end), ``final.pth`` (``model``, ``config``, ``categories``,
    ``iteration``) and TensorBoard events in ``tb/`` (the losses, their sum and the learning rate every
    ``log_every`` iterations; COCO AP under ``AP/`` every ``eval_every`` iterations). Rank 0 holds a lock
    on the folder for the whole run, so a second run into it fails at once. Every process reads
    ``last.pth`` to resume, so on several nodes ``output_dir`` must be on a file system they share.

    Args:
        config: a configuration as :func:`mrrcnn.config.load_config` returns it.
        resume: continue from ``output_dir/last.pth`` if it exists, exactly as if never interrupted (only
            ``train.iterations`` and the folder's name may differ from the saved configuration), and start
            fresh if it does not, as detectron2's ``--resume`` does: a run restarted by
            ``torchrun --max-restarts`` picks up where it stopped. One log line says which happened.
        progress: show a progress bar (rank 0); otherwise log a line every ``log_every`` iterations.

    Returns:
        The path of ``final.pth``.

    Raises:
        ValueError: a bad configuration, a checkpoint that cannot be resumed, a folder in use by another
            run, or training data none of which can be read.
        FloatingPointError: a loss became NaN or infinite; ``last.pth`` keeps the last good state.
    """
    config = validate_config(config)
    output_dir = Path(config["train"]["output_dir"])
    created_group = du.init_distributed(config["train"]["device"])
    try:
        with run_lock(output_dir, enabled=du.is_main_process()):
            return _train(config, output_dir, resume, progress)
    finally:
        if created_group:
            du.cleanup()


def _resume_state(last: Path, resume: bool, main: bool) -> dict[str, Any] | None:
    """``last``'s state if resuming from it, None to start fresh, and one line saying which.

    Every process goes by whether rank 0 sees ``last``: processes that disagreed would run different
    iterations and hang; one that cannot read it fails naming it."""
    exists = du.broadcast_object(last.exists())
    if resume and exists:
        state = load_checkpoint(last)
        if main:
            logger.info("resuming from %s at iteration %d", last, state["iteration"])
        return state
    if main and resume:
        logger.info("no %s yet: starting fresh", last)
    elif main and exists:
        logger.warning("%s exists and will be overwritten (mrrcnn train --resume continues it)", last)
    return None


def _train(config: dict[str, Any], output_dir: Path, resume: bool, progress: bool) -> Path:
    main = du.is_main_process()
    state = _resume_state(output_dir / "last.pth", resume, main)
    if state is not None:
        _check_resumable(state, config, output_dir / "last.pth")
    trainer = Trainer(config, du.device(config["train"]["device"]))
    if state is not None:
        trainer.load_state_dict(state)
    writer = None
    if main:
        remove_stale_temporaries(output_dir)
        (output_dir / "config.yaml").write_text(dump_config(config))
        writer = SummaryWriter(str(output_dir / "tb"), purge_step=trainer.iteration)
        logger.info(
            "training %s (%.2fM trainable parameters) on %d image(s), iterations %d to %d, %d process(es) x %d "
            "image(s) per iteration, on %s in %s",
            config["model"]["name"],
            sum(p.numel() for p in trainer.model.parameters() if p.requires_grad) / 1e6,
            len(trainer.dataset),
            trainer.iteration,
            config["train"]["iterations"],
            trainer.world,
            config["train"]["batch_size"],
            trainer.device,
            # train.amp applies to CUDA only: on the CPU float32 is what the user gets, said here once.
            "AMP" if trainer.use_amp else "float32",
        )
    if state is not None:
        trainer.restore_rng(state)
    try:
        trainer.model.train()
        _fit(trainer, output_dir, writer, progress)
    finally:
        if writer is not None:
            writer.close()
    if main:
        final = {
            "model": trainer.model.state_dict(),
            "config": config,
            "categories": trainer.dataset.categories,
            "iteration": trainer.iteration,
        }
        save_checkpoint(output_dir / "final.pth", final)
        if trainer.unreadable:
            logger.warning(
                "%d training image(s) could not be read and were skipped (data.skip_bad); the warnings above "
                "name them",
                len(trainer.unreadable),
            )
        logger.info("saved %s", output_dir / "final.pth")
    du.barrier()
    return output_dir / "final.pth"
