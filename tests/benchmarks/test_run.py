"""Smoke test of ``benchmarks/run.py`` on CPU: a tiny grid end to end, in-process, in seconds.

Checks what a reader of the results relies on: one record per configuration x backend x mode,
GB/s that follow the documented bytes model, the report files, and a correctness gate that
really stops a run whose variant computes the wrong loss. The GPU paths (do_bench, the CUDA
peak, the targets) cannot run here.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

import robustkernels as rk  # noqa: E402
from benchmarks import _report, _variants  # noqa: E402
from benchmarks import run as bench  # noqa: E402

TINY = ["--device", "cpu", "--n", "64", "--k", "10,33", "--repeats", "2", "--warmup", "1", "--min-sample-ms", "0.2"]
META_KEYS = {"command", "device", "device_type", "slug", "torch", "triton", "git_commit", "date", "threads"}
META_KEYS |= {"bytes_model", "timing", "peak_memory", "backends", "left_out"}


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _run(tmp_path: Path, *extra: str) -> tuple[dict, int, Path]:
    results, code = bench.run(bench.parse_args([*TINY, "--threads", "1", "--out", str(tmp_path), *extra]))
    return results, code, tmp_path / results["meta"]["slug"]


def test_tiny_grid_records_bandwidth_and_reports(tmp_path):
    # torch.compile is left to its own test: compiling 16 graphs would take most of a minute.
    results, code, stem = _run(
        tmp_path, "--losses", "mae,ce", "--dtypes", "float32,bfloat16", "--backends", "native,eager,torch_ce"
    )
    assert code == 0
    assert stem.name.startswith("cpu-") and stem.name != "cpu"
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert META_KEYS <= set(saved["meta"])
    assert saved["meta"]["git_commit"]
    assert saved["meta"]["backends"] == ["native", "eager", "torch_ce"]

    backends = {"mae": ("native", "eager"), "ce": ("native", "eager", "torch_ce")}
    want = {
        (loss, b, 64, k, dt, mode)
        for loss, bs in backends.items()
        for b in bs
        for k in (10, 33)
        for dt in ("float32", "bfloat16")
        for mode in ("fwd+bwd", "fwd")
    }
    keys = [(r["loss"], r["backend"], r["n"], r["k"], r["dtype"], r["mode"]) for r in saved["records"]]
    assert sorted(keys) == sorted(want)  # one record each, none missing, none extra

    for r in saved["records"]:
        itemsize = 4 if r["dtype"] == "float32" else 2
        passes = 2 if r["mode"] == "fwd+bwd" else 1
        nbytes = passes * r["n"] * r["k"] * itemsize + r["n"] * 8 + r["n"] * 4
        assert r["bytes"] == nbytes
        for key in ("time_s", "gbps", "copy_time_s", "copy_gbps", "pct_copy"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["gbps"] == pytest.approx(nbytes / r["time_s"] / 1e9, rel=1e-12)
        copy_gbps = 2 * r["n"] * r["k"] * itemsize / r["copy_time_s"] / 1e9
        assert r["copy_gbps"] == pytest.approx(copy_gbps, rel=1e-12)
        assert r["pct_copy"] == pytest.approx(100 * r["gbps"] / r["copy_gbps"], rel=1e-12)
        assert r["peak_bytes"] is None or r["peak_bytes"] >= 0
        assert r["rel_err"] <= _variants.TOLERANCE[getattr(torch, r["dtype"])]
        if r["backend"] == "native":
            assert set(r["speedup"]) == {"eager"} | ({"torch_ce"} if r["loss"] == "ce" else set())
            assert all(math.isfinite(x) and x > 0 for x in r["speedup"].values())

    md = stem.with_suffix(".md").read_text()
    assert _report.TABLE_HEADER in md and "## All configurations" in md
    assert "not evaluated on CPU" in md
    assert results["targets"] == []
    for kind in ("time", "copy"):
        png = stem.parent / f"{stem.name}-{kind}.png"
        assert png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cpu_backends():
    backends, left_out = bench.select_backends(bench.parse_args(["--device", "cpu"]))
    assert backends == ["native", "eager", "compile", "torch_ce"]
    assert set(left_out) == {"triton", "liger"}  # Triton on CPU is only its interpreter; Liger is CUDA-only


def test_compile_baseline(tmp_path):
    results, code, _ = _run(
        tmp_path, "--losses", "mae", "--k", "10", "--dtypes", "float32", "--backends", "native,compile"
    )
    assert code == 0
    assert sorted((r["backend"], r["mode"]) for r in results["records"]) == [
        ("compile", "fwd"),
        ("compile", "fwd+bwd"),
        ("native", "fwd"),
        ("native", "fwd+bwd"),
    ]
    assert all(set(r["speedup"]) == {"compile"} for r in results["records"] if r["backend"] == "native")


def test_merge_keeps_earlier_records(tmp_path):
    _run(tmp_path, "--losses", "mae", "--k", "10", "--dtypes", "float32", "--backends", "native,eager")
    results, _, _ = _run(
        tmp_path, "--losses", "ce", "--k", "10", "--dtypes", "float32", "--backends", "native", "--merge"
    )
    assert {r["loss"] for r in results["records"]} == {"mae", "ce"}
    assert len(results["meta"]["merged"]) == 1


def test_peak_is_null_without_clear_refs(tmp_path, monkeypatch):
    from benchmarks import _measure

    reason = "/proc/self/clear_refs is not writable (test)"
    monkeypatch.setattr(_measure, "rss_peak_unavailable", lambda: reason)
    results, _, stem = _run(tmp_path, "--losses", "mae", "--k", "10", "--dtypes", "float32", "--backends", "native")
    assert results["meta"]["peak_memory"] == reason
    assert [r["peak_bytes"] for r in results["records"]] == [None, None]
    assert f"peak memory: {reason}" in stem.with_suffix(".md").read_text()


def _wrong_native(monkeypatch):
    real = rk.robust_loss

    def wrong(*args, backend="auto", **kwargs):
        loss = real(*args, backend=backend, **kwargs)
        return loss * 1.1 if backend == "native" else loss

    monkeypatch.setattr(rk, "robust_loss", wrong)


def _wrong_eager(monkeypatch):
    real = _variants.naive_loss
    monkeypatch.setattr(_variants, "naive_loss", lambda name, eps: lambda x, y: real(name, eps=eps)(x, y) * 1.1)


@pytest.mark.parametrize("break_it", [_wrong_native, _wrong_eager], ids=["native", "eager"])
def test_correctness_gate_stops_a_wrong_variant(tmp_path, monkeypatch, break_it):
    break_it(monkeypatch)
    args = ["--losses", "mae", "--k", "10", "--dtypes", "float32", "--backends", "native,eager"]
    with pytest.raises(_variants.GateError, match="differs from the float64 reference"):
        _run(tmp_path, *args)
    results, code, _ = _run(tmp_path, *args, "--keep-going")
    assert code == 2 and results["records"] == [] and len(results["gate_failures"]) == 1


def _record(loss: str, backend: str, n: int, time_s: float, pct_copy: float = 50.0) -> dict:
    return {
        "loss": loss, "backend": backend, "n": n, "k": 1000, "dtype": "float32", "mode": "fwd+bwd",
        "time_s": time_s, "gbps": 1.0, "copy_gbps": 2.0, "pct_copy": pct_copy, "peak_bytes": 0,
    }  # fmt: skip


def test_targets_on_synthetic_cuda_records():
    """The GPU target check (its inputs cannot be measured here): thresholds and directions."""
    us = 1e-6
    records = [
        _record("ce", "triton", 256, 30 * us),
        _record("ce", "native", 256, 45 * us),  # latency: native > 40 us -> missed
        _record("ce", "eager", 256, 200 * us),  # 6.7x -> met
        _record("ce", "torch_ce", 256, 29 * us),  # F.cross_entropy faster -> missed
        _record("ce", "triton", 65536, 1000 * us, pct_copy=90.0),  # >= 85 -> met
        _record("ce", "native", 65536, 1100 * us, pct_copy=80.0),
        _record("ce", "compile", 65536, 1900 * us),  # 1.9x < 2 -> missed
        _record("bitemp", "native", 65536, 1000 * us, pct_copy=61.0),  # >= 60 for bitemp -> met
        _record("bitemp", "eager", 65536, 4000 * us),  # 4x < 5 -> missed
        _record("bitemp", "compile", 4096, 1.0),  # no fused record at this N: no target
    ]
    got = {(t["target"], t["loss"], t["n"]): t["met"] for t in _report.check_targets(records)}
    assert got == {
        ("latency", "ce", 256): False,
        ("vs_eager", "ce", 256): True,
        ("vs_torch_ce", "ce", 256): False,
        ("bandwidth", "ce", 65536): True,
        ("vs_compile", "ce", 65536): False,
        ("bandwidth", "bitemp", 65536): True,
        ("vs_eager", "bitemp", 65536): False,
    }
    meta = {"device_type": "cuda", "device": "GPU", "command": "c", "git_commit": "x", "date": "d", "torch": "t"}
    meta |= {"triton": "t", "liger-kernel": None, "threads": 1, "backends": [], "left_out": {}, "eps": 1.0}
    meta |= {"timing": "t", "bytes_model": "b", "peak_memory": "p"}
    results = {"meta": meta, "records": records, "targets": _report.check_targets(records)}
    md = _report.markdown(results | {"skipped": [], "gate_failures": []})
    assert f"| {_report.TARGET_TEXT['bandwidth']} | MET | 2/2 |" in md
    assert f"| {_report.TARGET_TEXT['latency']} | MISSED | 0/1 |" in md
    assert "- latency: ce float32 N=256: native time (us) = 45 (want <= 40)" in md
