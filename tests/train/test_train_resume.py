"""Kill and resume: N steps with a checkpoint at N/2, resumed, equal N uninterrupted steps exactly."""

import dataclasses

import pytest
import torch

from robustkernels.train import TrainConfig, train
from robustkernels.train.checkpoint import load_checkpoint


def _cfg(tmp_path, name, **kw):
    base = TrainConfig(
        dataset="composite_digits",
        num_digits=2,
        train_size=640,
        val_size=200,
        noise="symmetric",
        noise_rate=0.3,
        model="smallcnn",  # BatchNorm buffers must resume too
        hidden=128,
        loss="mae",
        epsilon="auto",
        eps_schedule="cosine",  # the eps schedule's position must resume
        augment=True,  # per-batch seeded crop + flip
        batch_size=64,  # 10 steps per epoch
        epochs=2,
        lr=0.4,
        warmup_epochs=0.5,
        grad_clip=1.0,
        threads=1,
        progress=False,
        plot=False,
        num_workers=0,
        time_loss_every=0,
        output_dir=str(tmp_path / name),
    )
    return dataclasses.replace(base, **kw)


def _weights(path):
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("stop_at", [7, 10], ids=["mid-epoch", "epoch-boundary"])
def test_resume_gives_same_weights_and_log(tmp_path, stop_at):
    full = train(_cfg(tmp_path, "full"))
    assert full["steps"] == 20
    # First run: stopped right after the checkpoint at step `stop_at` (what a kill leaves behind).
    first = train(_cfg(tmp_path, "killed", max_steps=stop_at, checkpoint_every=stop_at))
    assert first["steps"] == stop_at
    state = load_checkpoint(str(tmp_path / "killed" / "checkpoint.pt"))
    assert state["step"] == stop_at and (state["per_rank"][0]["partial"] is None) == (stop_at % 10 == 0)
    # The torch RNG is not left as the checkpoint saved it, so a resume must restore it.
    torch.manual_seed(12345)
    resumed = train(_cfg(tmp_path, "killed", resume="auto"))
    assert resumed["steps"] == 20
    a, b = _weights(str(tmp_path / "full" / "checkpoint.pt")), _weights(str(tmp_path / "killed" / "checkpoint.pt"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    strip = ("epoch_time_s", "images_per_s", "loss_share")
    clean = lambda h: [{k: v for k, v in r.items() if k not in strip} for r in h]  # noqa: E731
    assert clean(resumed["history"]) == clean(full["history"])
