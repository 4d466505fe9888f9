"""Throughput probe: images/s of a training step and of the image pipeline, and the time per epoch.

``python -m robustkernels.train throughput`` answers "how long will one WebVision epoch take on
this machine?" without the dataset:

- **Training step.** A torchvision model (``resnet50`` by default) trains on synthetic
  ``3 x 224 x 224`` batches, once per loss backend (the fused kernel chosen by ``auto``, the
  library's eager PyTorch reference ``torch``, and, from a source checkout, the naive loss of
  ``benchmarks/naive.py``). The variants run in interleaved rounds so a shared machine slows
  them alike. Every step is timed between device syncs, and the loss's forward + backward is
  timed on its own, as in the training loop.
- **Image pipeline.** JPEGs the size of the WebVision resized-256 release are decoded and
  augmented by the training transform (RandomResizedCrop, flip, ColorJitter, normalise) through a
  ``DataLoader`` with ``--workers`` processes. The images are built from scikit-learn's two bundled
  photographs (real JPEG content, no download), or read from ``--image-root`` / ``--image-list``.
- **Time per epoch** = training images / min(ranks x step images/s, ranks x workers per rank x
  images/s per worker). That assumes data-parallel scaling without communication cost and a
  pipeline that scales with its workers, so it is a lower bound on a real run, whose
  ``log.jsonl`` reports the measured ``images_per_s`` (``docs/training.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from ..backends import resolve_backend
from ..data.images import ImageListDataset, collate_images, read_file_list
from ..data.transforms import webvision_train_transform
from ..modules import RobustLoss
from .models import build_model

__all__ = ["StepResult", "measure_step", "measure_pipeline", "epoch_seconds", "main"]

# WebVision 1.0: about 2.4 M training images (Google + Flickr lists together).
WEBVISION_TRAIN_IMAGES = 2_400_000


@dataclass
class StepResult:
    """Median seconds per training step and per loss forward + backward, and what they imply."""

    variant: str
    backend: str
    batch_size: int
    step_s: float
    loss_s: float
    images_per_s: float = field(init=False)
    loss_share: float = field(init=False)

    def __post_init__(self) -> None:
        self.images_per_s = self.batch_size / self.step_s
        self.loss_share = self.loss_s / self.step_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loss_variants(loss: str, epsilon: float, params: dict[str, float], device: torch.device) -> dict:
    """``fused`` (the ``auto`` backend), ``reference`` (eager PyTorch) and ``naive`` if importable."""
    fused_backend = resolve_backend("auto", device)[0]
    variants: dict[str, tuple[str, Callable[[Tensor, Tensor], Tensor]]] = {
        "fused": (fused_backend, RobustLoss(loss, epsilon=epsilon, backend=fused_backend, **params)),
        "reference": ("torch", RobustLoss(loss, epsilon=epsilon, backend="torch", **params)),
    }
    try:  # benchmarks/ is not installed: only from a source checkout
        from benchmarks.naive import naive_loss
    except ImportError:
        pass
    else:
        variants["naive"] = ("eager", naive_loss(loss, eps=epsilon, **params))
    return variants


def measure_step(
    model_name: str = "resnet50",
    num_classes: int = 1000,
    batch_size: int = 256,
    image_size: int = 224,
    loss: str = "mae",
    epsilon: float = 0.0,
    loss_params: dict[str, float] | None = None,
    device: str | torch.device = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    steps: int = 10,
    warmup: int = 2,
    rounds: int = 1,
    variants: tuple[str, ...] = ("fused", "reference", "naive"),
) -> list[StepResult]:
    """Median step time of ``model_name`` on synthetic data, for each loss variant.

    One SGD step = forward (bf16 autocast with ``amp``), the loss's forward + backward on the
    detached logits, the model's backward from that gradient, and ``optimizer.step()``.
    ``rounds`` interleaves the variants (``steps`` timed steps each per round); the first
    ``warmup`` steps of each variant are not timed.
    """
    device = torch.device(device)
    torch.manual_seed(0)
    model = build_model(model_name, num_classes, (3, image_size, image_size)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch_size, 3, image_size, image_size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    available = _loss_variants(loss, epsilon, loss_params or {}, device)
    unknown = sorted(set(variants) - {"fused", "reference", "naive"})
    if unknown:
        raise ValueError(f"variants must be among fused, reference, naive; got {unknown}")
    chosen = {name: available[name] for name in variants if name in available}

    def one_step(criterion) -> tuple[float, float]:
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        _sync(device)
        t1 = time.perf_counter()
        leaf = logits.detach().requires_grad_()
        (grad,) = torch.autograd.grad(criterion(leaf, y), leaf)
        _sync(device)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        logits.backward(grad)
        optimizer.step()
        _sync(device)
        return time.perf_counter() - t0, t2 - t1

    times: dict[str, list[tuple[float, float]]] = {name: [] for name in chosen}
    for _, criterion in chosen.values():
        for _ in range(warmup):
            one_step(criterion)
    for _ in range(rounds):
        for name, (_, criterion) in chosen.items():
            times[name] += [one_step(criterion) for _ in range(steps)]
    return [
        StepResult(
            name,
            backend,
            batch_size,
            statistics.median(t for t, _ in times[name]),
            statistics.median(t for _, t in times[name]),
        )
        for name, (backend, _) in chosen.items()
    ]


def make_sample_jpegs(folder: str, count: int = 64, short_side: int = 256, seed: int = 0) -> list[tuple[str, int]]:
    """``count`` JPEGs like WebVision's resized release (short side 256, quality 90).

    Random crops (aspect 3:4 to 16:9) and flips of scikit-learn's two bundled photographs, so
    the decoder sees real image statistics rather than noise or flat colour.
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images  # two 427 x 640 RGB photographs
    samples = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        aspect = rng.uniform(0.75, 16 / 9)
        ch = int(rng.integers(h // 2, h + 1))
        cw = min(w, int(ch * aspect))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        img = Image.fromarray(photo[top : top + ch, left : left + cw])
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = short_side / min(img.size)
        img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), Image.BICUBIC)
        name = f"img{i:05d}.jpg"
        img.save(os.path.join(folder, name), quality=90)
        samples.append((name, 0))
    return samples


def measure_pipeline(
    workers: int = 2,
    images: int = 512,
    batch_size: int = 64,
    image_size: int = 224,
    image_root: str | None = None,
    image_list: str | None = None,
) -> dict[str, float]:
    """Images/s of decode + the WebVision training transform through a ``DataLoader``.

    The first batch (worker start-up) is not timed. ``images`` samples are read (the file list
    repeats as needed, as an epoch would read each file once; the OS page cache then holds the
    files, so this is the decode + augment rate, not the disk's).
    """
    with tempfile.TemporaryDirectory() as tmp:
        if image_list:
            samples = read_file_list(image_list)
            root = image_root or os.path.dirname(image_list)
        elif image_root:
            exts = (".jpg", ".jpeg", ".png")
            names = sorted(f for f in os.listdir(image_root) if f.lower().endswith(exts))
            samples, root = [(f, 0) for f in names], image_root
        else:
            samples, root = make_sample_jpegs(tmp), tmp
        if not samples:
            raise ValueError(f"no images found under {image_root or image_list!r}")
        reps = math.ceil((images + batch_size) / len(samples))
        listed = [(p, 0) for p, _ in samples] * reps
        dataset = ImageListDataset(root, listed[: images + batch_size], 1, webvision_train_transform(image_size))
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_images
        )
        it = iter(loader)
        next(it)  # worker start-up and the first batch
        start = time.perf_counter()
        seen = sum(len(batch[1]) for batch in it)
        elapsed = time.perf_counter() - start
    return {"workers": workers, "images": seen, "seconds": elapsed, "images_per_s": seen / elapsed}


def epoch_seconds(
    train_images: int, step_images_per_s: float, ranks: int, pipeline_images_per_s_per_worker: float | None, workers
) -> dict[str, float]:
    """Lower bound on the time per epoch from the two measured rates (see the module docstring)."""
    compute = ranks * step_images_per_s
    out = {"compute_images_per_s": compute, "compute_bound_s": train_images / compute}
    if pipeline_images_per_s_per_worker is not None:
        feed = ranks * workers * pipeline_images_per_s_per_worker
        out.update(pipeline_images_per_s=feed, pipeline_bound_s=train_images / feed)
    out["epoch_s"] = max(out["compute_bound_s"], out.get("pipeline_bound_s", 0.0))
    return out


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m robustkernels.train throughput",
        description="Measure training-step and image-pipeline throughput and print the expected time per epoch.",
    )
    p.add_argument("--model", default="resnet50")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=256, help="per device (per rank)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--loss", default="mae")
    p.add_argument("--epsilon", default="auto", help="number or 'auto' (eps(K), Eq. 4)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--variants", default="fused,reference,naive")
    p.add_argument("--threads", type=int, default=None, help="torch threads on the CPU")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the pipeline probe")
    p.add_argument("--pipeline-images", type=int, default=512, help="0 skips the pipeline probe")
    p.add_argument("--image-root", default=None, help="measure on these images instead of the built-in JPEGs")
    p.add_argument("--image-list", default=None, help="a 'path label' file list (paths relative to --image-root)")
    p.add_argument("--ranks", type=int, default=8, help="GPUs (or processes) of the run to extrapolate to")
    p.add_argument("--workers-per-rank", type=int, default=10, help="DataLoader workers per rank in that run")
    p.add_argument("--train-images", type=int, default=WEBVISION_TRAIN_IMAGES)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)
    if args.epsilon == "auto":
        from ..epsilon import epsilon_for_classes

        epsilon = epsilon_for_classes(args.num_classes)
    else:
        epsilon = float(args.epsilon)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{args.model}, batch {args.batch_size} per rank, {args.image_size}px, K={args.num_classes}, "
        f"loss {args.loss} (eps {epsilon:.3f}), amp={args.amp}, channels_last={args.channels_last}; {name}"
    )
    steps = measure_step(
        args.model,
        args.num_classes,
        args.batch_size,
        args.image_size,
        args.loss,
        epsilon,
        device=device,
        amp=args.amp,
        channels_last=args.channels_last,
        steps=args.steps,
        warmup=args.warmup,
        rounds=args.rounds,
        variants=tuple(v for v in args.variants.split(",") if v),
    )
    for r in steps:
        print(
            f"  step  {r.variant:>9} ({r.backend:>6}): {1e3 * r.step_s:9.1f} ms  {r.images_per_s:8.1f} images/s  "
            f"loss fwd+bwd {1e3 * r.loss_s:8.3f} ms = {100 * r.loss_share:5.2f}% of the step"
        )
    pipeline = None
    if args.pipeline_images > 0:
        pipeline = measure_pipeline(
            args.workers, args.pipeline_images, 64, args.image_size, args.image_root, args.image_list
        )
        print(
            f"  image pipeline: {pipeline['images_per_s']:.1f} images/s with {args.workers} workers "
            f"({pipeline['images_per_s'] / max(1, args.workers):.1f} per worker)"
        )
    per_worker = pipeline["images_per_s"] / max(1, args.workers) if pipeline else None
    best = next((r for r in steps if r.variant == "fused"), steps[0])
    epoch = epoch_seconds(args.train_images, best.images_per_s, args.ranks, per_worker, args.workers_per_rank)
    line = f"  expected epoch ({best.variant} loss) of {args.train_images} images on {args.ranks} such ranks: "
    line += _duration(epoch["epoch_s"])
    line += f" (compute bound {_duration(epoch['compute_bound_s'])}"
    if "pipeline_bound_s" in epoch:
        line += f", pipeline bound {_duration(epoch['pipeline_bound_s'])} with {args.workers_per_rank} workers per rank"
    print(line + ")")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            record = {"args": vars(args), "device": name, "torch": torch.__version__, "epsilon": epsilon}
            json.dump(record | {"steps": [asdict(r) for r in steps], "pipeline": pipeline, "epoch": epoch}, f, indent=2)
    return 0
