"""2-process DDP on CPU (gloo) matches the single-process run with the same global batch, and resumes exactly."""

import dataclasses
import os
import socket

import torch
import torch.multiprocessing as mp

from robustkernels.train import TrainConfig, train
from robustkernels.train.checkpoint import load_checkpoint


def _cfg(out, **kw):
    base = TrainConfig(
        dataset="composite_digits",
        num_digits=2,
        train_size=512,
        val_size=200,
        noise="symmetric",
        noise_rate=0.2,
        model="mlp",  # no BatchNorm: per-rank batch statistics would differ by design
        hidden=64,
        loss="mae",
        epsilon="auto",
        batch_size=64,  # global: 32 per rank with 2 ranks; 8 steps per epoch
        epochs=2,
        lr=0.4,
        grad_clip=1.0,
        threads=1,
        progress=False,
        plot=False,
        num_workers=0,
        time_loss_every=0,
        output_dir=out,
    )
    return dataclasses.replace(base, **kw)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out, resumed_out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    try:
        train(_cfg(out, device="cpu"))
        # The same DDP job stopped mid-epoch right after a checkpoint, then resumed.
        train(_cfg(resumed_out, device="cpu", max_steps=5, checkpoint_every=5))
        train(_cfg(resumed_out, device="cpu", resume="auto"))
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_ddp_matches_single_process(tmp_path):
    single = train(_cfg(str(tmp_path / "single"), device="cpu"))
    ddp_out = str(tmp_path / "ddp")
    resumed_out = str(tmp_path / "ddp_resumed")
    mp.spawn(_worker, args=(2, _free_port(), ddp_out, resumed_out), nprocs=2, join=True)
    a = load_checkpoint(str(tmp_path / "single" / "checkpoint.pt"))
    b = load_checkpoint(os.path.join(ddp_out, "checkpoint.pt"))
    assert b["step"] == a["step"] == 16
    assert len(b["per_rank"]) == 2  # one RNG state per rank
    for key, w in a["model"].items():
        # Same samples per step, gradients averaged over ranks: equal up to summation order.
        torch.testing.assert_close(b["model"][key], w, rtol=1e-4, atol=1e-5, msg=key)
    # The logged metrics are global (all-reduced), so they match too.
    for ra, rb in zip(a["history"], b["history"]):
        assert abs(ra["train_loss"] - rb["train_loss"]) < 1e-4
        assert abs(ra["val_top1"] - rb["val_top1"]) <= 1.0  # at most two of 200 argmax ties flip
    assert single["steps"] == 16
    # Kill and resume under DDP: bit-identical weights, and the same logged (all-reduced) sums,
    # which needs every rank's own partial-epoch sums and RNG streams back.
    c = load_checkpoint(os.path.join(resumed_out, "checkpoint.pt"))
    for key, w in b["model"].items():
        assert torch.equal(c["model"][key], w), key
    strip = ("epoch_time_s", "images_per_s", "loss_share")
    assert [{k: v for k, v in r.items() if k not in strip} for r in c["history"]] == [
        {k: v for k, v in r.items() if k not in strip} for r in b["history"]
    ]
