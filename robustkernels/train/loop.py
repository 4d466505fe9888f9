"""The training loop: data, noise, model, loss with the logit bias, DDP, checkpoints, logs."""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..backends import resolve_backend
from ..data.images import collate_images
from ..data.tensor import TensorDataset
from ..data.transforms import crop_flip
from ..epsilon import epsilon_for_classes
from ..modules import RobustLoss
from ..noise import inject_noise
from .checkpoint import ResumePoint, capture_rng, find_resume_point, load_checkpoint, restore_rng, save_checkpoint
from .config import TrainConfig
from .datasets import build_data
from .distributed import DistContext, all_reduce_min, all_reduce_sum, init_distributed
from .errors import ConfigError, DivergedError, ResumeMismatchError
from .metrics import EpochLog, topk_correct
from .models import build_model
from .optim import build_optimizer, lr_lambda, scaled_lr
from .resume import check_resume_config, restore_training_state
from .sampler import ResumableSampler
from .validation import setting_name

__all__ = ["train", "CHECKPOINT_NAME"]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"

# Steps between host-side checks for a non-finite loss (also checked at every epoch end and
# before every checkpoint, so no checkpoint ever holds a diverged model).
_FINITE_CHECK_EVERY = 50

# At most this many mislabelled training images are evaluated per epoch for the memorised share:
# the noise draw is random, so the first ones by index are an unbiased sample, and the cost stays
# a bounded fraction of an epoch on large training sets.
_MEMORISED_MAX = 10000


class _FixedEpsilon:
    """Stand-in for :class:`robustkernels.schedules.EpsilonScheduler` when eps does not change."""

    def __init__(self, value: float) -> None:
        self.epsilon = value

    def step(self) -> float:
        return self.epsilon

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _epsilon_schedule(cfg: TrainConfig, num_classes: int, total_steps: int):
    if cfg.eps_schedule == "none":
        eps = epsilon_for_classes(num_classes) if cfg.epsilon == "auto" else float(cfg.epsilon)
        return _FixedEpsilon(eps)
    from ..schedules import EpsilonScheduler  # the schedule module of the package

    return EpsilonScheduler(
        num_classes,
        total_steps=total_steps,
        mode=cfg.eps_schedule,
        start=cfg.epsilon,
        end=cfg.eps_end,
        step_size=cfg.eps_step_size,
        gamma=cfg.eps_gamma,
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _tensor_batches(
    dataset: TensorDataset, sampler: ResumableSampler, batch: int, cfg: TrainConfig, device: torch.device
) -> Iterator[tuple[Tensor, Tensor, int]]:
    indices = sampler.index_tensor()
    first = (sampler.num_samples - len(indices)) // batch  # batches skipped by a resume
    for b in range(len(indices) // batch):
        x, y = dataset.batch(indices[b * batch : (b + 1) * batch])
        if cfg.augment:
            # Seeded by (seed, epoch, batch, rank): identical after a resume, independent per rank.
            gen = torch.Generator().manual_seed(hash((cfg.seed, sampler.epoch, first + b, sampler.rank)) & (2**63 - 1))
            x = crop_flip(x, 4, gen)
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), 0


def _image_batches(dataset, sampler: ResumableSampler, batch: int, cfg: TrainConfig, device: torch.device):
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=torch.utils.data.BatchSampler(sampler, batch, drop_last=True),
        num_workers=cfg.num_workers,
        collate_fn=collate_images,
        pin_memory=device.type == "cuda",
    )
    for x, y, skipped in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), skipped


@torch.no_grad()
def evaluate(model: nn.Module, dataset, ctx: DistContext, cfg: TrainConfig, batch: int) -> dict[str, float]:
    """Top-1 / top-5 accuracy on a clean set, this rank's share ``rank::world`` then summed."""
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # top1, top5, n
    shard = list(range(ctx.rank, len(dataset), ctx.world_size))
    if isinstance(dataset, TensorDataset):
        idx = torch.tensor(shard, dtype=torch.int64)
        batches = (dataset.batch(idx[i : i + batch]) + (0,) for i in range(0, len(idx), batch))
    else:
        batches = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, shard),
            batch_size=batch,
            num_workers=cfg.num_workers,
            collate_fn=collate_images,
        )
    for x, y, _ in batches:
        x, y = x.to(ctx.device), y.to(ctx.device)
        if cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            logits = model(x)
        counts += torch.stack(
            [*topk_correct(logits.float(), y, (1, 5)), torch.tensor(float(len(y)), device=ctx.device)]
        )
    all_reduce_sum(counts, ctx)
    model.train()
    top1, top5, n = counts.tolist()
    return {"top1": 100.0 * top1 / max(n, 1.0), "top5": 100.0 * top5 / max(n, 1.0)}


def _mislabelled_subset(train_set, flipped: np.ndarray) -> TensorDataset | None:
    """The training images whose noisy label differs from the clean one, with their wrong labels.

    Its top-1 "accuracy" is the share of wrong labels the model has memorised. ``None`` without
    label noise, and for datasets read from files (their training transforms augment).
    """
    if not isinstance(train_set, TensorDataset) or not flipped.any():
        return None
    idx = torch.from_numpy(np.flatnonzero(flipped)[:_MEMORISED_MAX])
    images, labels = train_set.batch(idx)
    return TensorDataset(images, labels, train_set.num_classes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _NonFiniteWatch:
    """The first step whose loss was NaN or infinite, tracked on the device without a host sync per step."""

    _NONE = 2**62

    def __init__(self, step: int, device: torch.device) -> None:
        self._step = torch.full((), step, dtype=torch.int64, device=device)
        self._first = torch.full((), self._NONE, dtype=torch.int64, device=device)

    def observe(self, loss: Tensor) -> None:
        """Count one step; remember it if ``loss`` is not finite."""
        self._step += 1
        bad = ~torch.isfinite(loss.detach())
        self._first = torch.where(bad, torch.minimum(self._first, self._step), self._first)

    def first_bad_step(self, ctx: DistContext) -> int | None:
        """The first bad step on any rank (a collective under DDP), or ``None``."""
        first = all_reduce_min(self._first.clone(), ctx)
        value = int(first.item())
        return None if value == self._NONE else value


def _stop_if_diverged(watch: _NonFiniteWatch, ctx: DistContext, cfg: TrainConfig, steps_per_epoch: int) -> None:
    bad = watch.first_bad_step(ctx)
    if bad is None:
        return
    lr = scaled_lr(cfg.lr, cfg.batch_size, cfg.base_batch, cfg.lr_scaling)
    scaled = f", {lr:g} after scaling to batch {cfg.batch_size}" if lr != cfg.lr else ""
    epoch = (bad - 1) // steps_per_epoch + 1
    raise DivergedError(
        f"the training loss ({cfg.loss}) became NaN or infinite at step {bad} (epoch {epoch}) "
        f"with --lr {cfg.lr:g}{scaled}: the run diverged. Lower --lr (for example to {cfg.lr / 10:g}), add warm-up "
        f"(--warmup-epochs) or clip gradients (--grad-clip). Checkpoints written before step {bad} are kept"
    )


def _per_rank_batch(cfg: TrainConfig, ctx: DistContext) -> int:
    if cfg.batch_size % ctx.world_size:
        raise ConfigError(
            f"{setting_name('batch_size')} is the global batch and must be divisible by the {ctx.world_size} ranks, "
            f"got {cfg.batch_size}"
        )
    return cfg.batch_size // ctx.world_size


def _find_resume(cfg: TrainConfig, ckpt_path: str, ctx: DistContext) -> ResumePoint | None:
    """The checkpoint ``cfg.resume`` names, loaded (``auto``: the newest readable one, or none)."""
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        point = find_resume_point(ckpt_path, cfg.trust_checkpoint)
    else:
        point = ResumePoint(cfg.resume, load_checkpoint(cfg.resume, cfg.trust_checkpoint))
    if point is not None and ctx.is_main:
        for message in point.skipped:
            log.warning("%s", message)
        if point.skipped and os.path.exists(ckpt_path):
            # Set the unreadable newest aside: the next write would otherwise rotate it over the
            # readable one this run resumed from.
            os.replace(ckpt_path, ckpt_path + ".unreadable")
            log.warning("moved the unreadable %s to %s.unreadable", ckpt_path, ckpt_path)
    return point


def _rank_state(point: ResumePoint, ctx: DistContext) -> dict[str, Any]:
    saved = point.state["per_rank"]
    if len(saved) != ctx.world_size:
        raise ResumeMismatchError(
            f"checkpoint {point.path} was written by {len(saved)} ranks; resume it with the same number "
            f"(here {ctx.world_size}) so every rank continues its own sample stream"
        )
    return saved[ctx.rank]


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run one training job described by ``cfg``; returns ``{"history": [...], "final": {...}}``.

    Under torchrun every rank calls this; rank 0 writes logs, checkpoints and the plot.

    Raises:
        CheckpointError: the checkpoint to resume from is unreadable, unsafe or does not fit.
        ResumeMismatchError: resuming with changed settings without ``resume_override``.
        ConfigError: the batch does not fit the data or the ranks.
        DivergedError: the loss became NaN or infinite.
    """
    ctx = init_distributed(cfg.device)
    if cfg.threads and ctx.device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    per_rank = _per_rank_batch(cfg, ctx)
    os.makedirs(cfg.output_dir, exist_ok=True)
    ckpt_path = os.path.join(cfg.output_dir, CHECKPOINT_NAME)
    # The checkpoint is read and its settings compared before any data is built, so a refusal is immediate.
    point = _find_resume(cfg, ckpt_path, ctx)
    changes: dict[str, tuple[object, object]] = {}
    if point is not None:
        changes, warnings = check_resume_config(point, cfg)
        for message in warnings if ctx.is_main else ():
            log.warning("%s", message)
    _seed_everything(cfg.seed)

    bundle = build_data(cfg)
    k = bundle.num_classes
    noisy = inject_noise(
        bundle.train.targets,
        k,
        cfg.noise,
        cfg.noise_rate,
        seed=cfg.noise_seed,
        dataset=cfg.noise_mapping or bundle.asym_mapping,
    )
    train_set = bundle.train.with_targets(torch.as_tensor(noisy.labels))
    mislabelled = _mislabelled_subset(train_set, noisy.flipped)
    steps_per_epoch = len(train_set) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{setting_name('batch_size')} must not exceed the {len(train_set)} training images, got {cfg.batch_size}"
        )
    total_steps = cfg.epochs * steps_per_epoch
    last_step = total_steps if cfg.max_steps is None else min(total_steps, cfg.max_steps)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and in every run
    model = build_model(cfg.model, k, bundle.input_shape, cfg.hidden).to(ctx.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    lr = scaled_lr(cfg.lr, cfg.batch_size, cfg.base_batch, cfg.lr_scaling)
    optimizer = build_optimizer(model, cfg.optimizer, lr, cfg.momentum, cfg.nesterov, cfg.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lr_lambda(cfg.lr_schedule, total_steps, steps_per_epoch, cfg.warmup_epochs, cfg.lr_step_epochs, cfg.lr_gamma),
    )
    eps_sched = _epsilon_schedule(cfg, k, total_steps)
    criterion = RobustLoss(cfg.loss, epsilon=eps_sched.epsilon, backend=cfg.loss_backend, **cfg.loss_params)
    backend_name = resolve_backend(cfg.loss_backend, ctx.device)[0]
    if ctx.is_main:
        log.info(
            "loss %s (backend %s), %d classes, %d steps of %d images",
            cfg.loss,
            backend_name,
            k,
            total_steps,
            cfg.batch_size,
        )

    net: nn.Module = model
    if ctx.distributed:
        net = DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    epoch_log = EpochLog(cfg.output_dir, cfg.log_format, enabled=ctx.is_main)
    step, partial, rng_state = 0, None, None
    loss_timing = [0.0, 0.0]  # seconds in the loss (forward + backward), seconds in the whole step
    if point is not None:
        mine = _rank_state(point, ctx)
        for message in restore_training_state(point, model, optimizer, lr_sched, eps_sched, changes):
            if ctx.is_main:
                log.warning("%s", message)
        state = point.state
        step, loss_timing, epoch_log.history = state["step"], state["loss_timing"], state["history"]
        # With changed settings the saved partial-epoch sums belong to the old run: not mixed in.
        rng_state, partial = mine["rng"], None if changes else mine["partial"]
        if ctx.is_main:
            log.info("resumed from %s at step %d", point.path, step)

    sampler = ResumableSampler(len(train_set), ctx.world_size, ctx.rank, cfg.seed)
    tensor_data = isinstance(train_set, TensorDataset)

    saved_at = [step if point is not None else -1]  # the step of the last checkpoint written or read

    def checkpoint(partial_epoch: dict | None) -> None:
        _stop_if_diverged(watch, ctx, cfg, steps_per_epoch)  # a diverged model never overwrites a good one
        saved_at[0] = step
        # Per-rank state (RNG streams, this rank's partial epoch sums) is gathered to rank 0.
        per_rank = [{"rng": capture_rng(), "partial": partial_epoch}]
        if ctx.distributed:
            mine, per_rank = per_rank[0], [None] * ctx.world_size
            torch.distributed.all_gather_object(per_rank, mine)
        if ctx.is_main:
            save_checkpoint(
                ckpt_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_scheduler": lr_sched.state_dict(),
                    "eps_scheduler": eps_sched.state_dict(),
                    "step": step,
                    "loss_timing": loss_timing,
                    "history": epoch_log.history,
                    "per_rank": per_rank,
                    "config": cfg.to_dict(),
                },
            )

    watch = _NonFiniteWatch(step, ctx.device)
    if rng_state is not None:
        restore_rng(rng_state)  # last, so nothing above consumes the restored streams
    model.train()
    progress = None
    if cfg.progress and ctx.is_main:
        from tqdm.auto import tqdm

        progress = tqdm(total=last_step, initial=step, unit="step", dynamic_ncols=True)

    stop_partial = None
    while step < last_step:
        epoch, start = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        sampler.set_start(start * per_rank)
        # Per-epoch sums kept on device (no host sync per step): loss, correct (noisy labels), n,
        # unreadable images skipped.
        sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)
        timing = {"train_s": 0.0}
        if partial is not None and start > 0:
            sums += torch.tensor(partial["sums"], dtype=torch.float64, device=ctx.device)
            timing.update(partial["timing"])
        partial = None
        batches = (_tensor_batches if tensor_data else _image_batches)(train_set, sampler, per_rank, cfg, ctx.device)
        t_epoch = time.perf_counter()
        checkpoint_after_epoch = False
        for x, y, skipped in batches:
            if cfg.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            # (step + 1): the first step of a run (warm-up, torch.compile tracing) is not timed.
            timed = cfg.time_loss_every > 0 and (step + 1) % cfg.time_loss_every == 0
            if timed:
                _sync(ctx.device)
                t0 = time.perf_counter()
            criterion.epsilon = eps_sched.epsilon
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                logits = net(x)
            if timed:
                _sync(ctx.device)
                t1 = time.perf_counter()
            # The loss runs on a detached leaf so its forward + backward can be timed on its own;
            # the model's backward then starts from d(loss)/d(logits), which is exactly what a
            # single loss.backward() would propagate.
            leaf = logits.detach().requires_grad_()
            loss = criterion(leaf, y)
            (grad_logits,) = torch.autograd.grad(loss, leaf)
            if timed:
                _sync(ctx.device)
                t2 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            logits.backward(grad_logits)
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            lr_sched.step()
            eps_sched.step()
            step += 1
            watch.observe(loss)
            with torch.no_grad():
                correct = (logits.argmax(1) == y).sum()
                sums += torch.stack(
                    [
                        loss.detach().double() * len(y),
                        correct.double(),
                        sums.new_tensor(len(y)),
                        sums.new_tensor(skipped),
                    ]
                )
            if timed:
                _sync(ctx.device)
                t3 = time.perf_counter()
                loss_timing[0] += t2 - t1
                loss_timing[1] += t3 - t0
            if progress is not None:
                progress.update(1)
            end_of_epoch = step % steps_per_epoch == 0
            if step % _FINITE_CHECK_EVERY == 0 or end_of_epoch or step >= last_step:
                _stop_if_diverged(watch, ctx, cfg, steps_per_epoch)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                if end_of_epoch:
                    checkpoint_after_epoch = True  # after the epoch's evaluation is logged
                else:
                    timing_now = dict(timing, train_s=timing["train_s"] + time.perf_counter() - t_epoch)
                    checkpoint({"sums": sums.tolist(), "timing": timing_now})
            if step >= last_step:
                break
        _sync(ctx.device)
        timing["train_s"] += time.perf_counter() - t_epoch
        if step % steps_per_epoch:  # stopped by max_steps inside an epoch: keep its partial sums
            stop_partial = {"sums": sums.tolist(), "timing": timing}
            seen = all_reduce_sum(sums.clone(), ctx)[2].item()
            if ctx.is_main:
                share = loss_timing[0] / loss_timing[1] if loss_timing[1] > 0 else math.nan
                log.info(
                    "stopped at step %d inside epoch %d: %.1f images/s this epoch, loss share %.4f",
                    step,
                    epoch + 1,
                    seen / timing["train_s"],
                    share,
                )
            break
        all_reduce_sum(sums, ctx)
        loss_sum, correct, n, skipped_total = sums.tolist()
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "lr": optimizer.param_groups[0]["lr"],
            "epsilon": float(criterion.epsilon),
            "train_loss": loss_sum / n,
            "train_acc_noisy": 100.0 * correct / n,
            "skipped_images": int(skipped_total),
            "epoch_time_s": timing["train_s"],
            "images_per_s": n / timing["train_s"] if timing["train_s"] > 0 else math.nan,
            # Over all timed steps so far (one every time_loss_every steps, possibly none this epoch).
            "loss_share": loss_timing[0] / loss_timing[1] if loss_timing[1] > 0 else math.nan,
        }
        if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or step >= last_step):
            for name, val in bundle.vals.items():
                for metric, value in evaluate(net, val, ctx, cfg, per_rank).items():
                    record[f"{name}_{metric}"] = value
            if mislabelled is not None:
                # Share (%) of the mislabelled training images predicted as their wrong label.
                record["train_memorised"] = evaluate(net, mislabelled, ctx, cfg, per_rank)["top1"]
        epoch_log.write(record)
        if progress is not None:
            progress.set_postfix(loss=f"{record['train_loss']:.4f}", refresh=False)
        if checkpoint_after_epoch and step < last_step:
            checkpoint(None)
    if progress is not None:
        progress.close()
    if saved_at[0] != step:  # not already written at this very step (which would drop the older one)
        checkpoint(stop_partial)
    if cfg.plot and ctx.is_main and epoch_log.history:
        from .plot import plot_history

        plot_history({cfg.loss: epoch_log.history}, os.path.join(cfg.output_dir, "curves.png"))
    return {
        "history": epoch_log.history,
        "final": epoch_log.history[-1] if epoch_log.history else {},
        "model": model,
        "noise_rate": noisy.noise_rate,
        "num_classes": k,
        "steps": step,
        "loss_backend": backend_name,
    }
