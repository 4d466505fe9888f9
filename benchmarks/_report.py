"""Reports of ``benchmarks/run.py``: the GPU target check, the markdown and the plots.

Everything here reads the records the runner produced (one dict per loss x backend x N x K x
dtype x mode) and measures nothing, so a report can be regenerated from a saved JSON.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from benchmarks._variants import BACKENDS as ORDER
from benchmarks._variants import FUSED

TARGET_K = 1000
TARGET_MODE = "fwd+bwd"
TARGET_TEXT = {
    "bandwidth": "N = 65536: faster fused backend >= 85 % of copy bandwidth (bitemp >= 60 %)",
    "vs_compile": "N >= 4096: fused >= 2x faster than torch.compile",
    "vs_eager": "every N: fused >= 5x faster than eager",
    "vs_torch_ce": "ce, every N: fused no slower than F.cross_entropy",
    "latency": "N = 256: native fwd+bwd <= 40 us",
}
TABLE_HEADER = "| loss | N | copy GB/s |"


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def fmt_mb(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.1f}"


def _fmt_x(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}x"


def _groups(records: list[dict]) -> dict[tuple, dict[str, dict]]:
    """(loss, K, N, dtype, mode) -> backend -> record."""
    out: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in records:
        out[(r["loss"], r["k"], r["n"], r["dtype"], r["mode"])][r["backend"]] = r
    return out


def best_fused(by_backend: dict[str, dict]) -> dict | None:
    fused = [r for b, r in by_backend.items() if b in FUSED]
    return min(fused, key=lambda r: r["time_s"]) if fused else None


def print_config(records: list[dict]) -> None:
    """One progress line per mode of a freshly measured configuration."""
    for (loss, k, n, dtype, mode), by_backend in _groups(records).items():
        parts = [
            f"{b} {fmt_time(r['time_s'])} ({r['pct_copy']:.0f}%)" for b in ORDER if (r := by_backend.get(b)) is not None
        ]
        print(f"{loss:9s} N={n:<6d} K={k:<6d} {dtype:8s} {mode:7s} " + "  ".join(parts), flush=True)


def _target(key: tuple, target: str, what: str, value: float, want: float, higher: bool = True) -> dict:
    loss, _, n, dtype, _ = key
    met = value >= want if higher else value <= want
    want_text = (">= " if higher else "<= ") + f"{want:g}"
    return {"target": target, "loss": loss, "dtype": dtype, "n": n, "what": what, "value": value} | {
        "want": want_text,
        "met": bool(met),
    }


def check_targets(records: list[dict]) -> list[dict]:
    """Each GPU target (K = 1000, forward + backward) for every measured loss/dtype/N:
    ``met`` is True/False; targets whose configurations were not measured do not appear.
    "Fused" is the faster of the fused backends of that configuration."""
    out = []
    for key, by in _groups(records).items():
        loss, k, n, _, mode = key
        best = best_fused(by)
        if k != TARGET_K or mode != TARGET_MODE or best is None:
            continue
        if n == 65536:
            want = 60.0 if loss == "bitemp" else 85.0
            out.append(_target(key, "bandwidth", f"{best['backend']} % of copy", best["pct_copy"], want))
        for base, target, want, applies in (
            ("compile", "vs_compile", 2.0, n >= 4096),
            ("eager", "vs_eager", 5.0, True),
            ("torch_ce", "vs_torch_ce", 1.0, loss == "ce"),
        ):
            if applies and base in by:
                ratio = by[base]["time_s"] / best["time_s"]
                out.append(_target(key, target, f"{base} time / {best['backend']} time", ratio, want))
        if n == 256 and "native" in by:
            us = by["native"]["time_s"] * 1e6
            out.append(_target(key, "latency", "native time (us)", us, 40.0, higher=False))
    return out


def _targets_md(results: dict) -> list[str]:
    if results["meta"]["device_type"] != "cuda":
        return [
            "## Targets",
            "",
            "The targets (K = 1000, forward + backward) are GPU targets; they are not evaluated on CPU.",
            "",
        ]
    targets = results["targets"]
    lines = ["## Targets (K = 1000, forward + backward)", "", "| target | status | met |", "|---|---|---:|"]
    for key, text in TARGET_TEXT.items():
        rows = [t for t in targets if t["target"] == key]
        met = sum(t["met"] for t in rows)
        status = "not measured" if not rows else "MET" if met == len(rows) else "MISSED"
        lines.append(f"| {text} | {status} | {met}/{len(rows)} |")
    missed = [t for t in targets if not t["met"]]
    if missed:
        lines += ["", "Missed:", ""]
        lines += [
            f"- {t['target']}: {t['loss']} {t['dtype']} N={t['n']}: {t['what']} = {t['value']:.3g} (want {t['want']})"
            for t in missed
        ]
    return [*lines, ""]


def headline_k(records: list[dict], want: int) -> int | None:
    ks = sorted({r["k"] for r in records})
    return min(ks, key=lambda k: (abs(math.log(k / want)), k)) if ks else None


def _headline_tables(records: list[dict], k: int) -> list[str]:
    groups = _groups([r for r in records if r["k"] == k])
    backends = [b for b in ORDER if any(r["backend"] == b for r in records)]
    lines = []
    for dtype in sorted({key[3] for key in groups}):
        for mode in sorted({key[4] for key in groups}, reverse=True):
            keys = sorted(key for key in groups if key[3] == dtype and key[4] == mode)
            if not keys:
                continue
            lines += [
                f"### K = {k}, {dtype}, {mode}",
                "",
                TABLE_HEADER
                + "".join(f" {b} |" for b in backends)
                + " fused GB/s | % copy | peak MB fused / eager / compile | vs eager | vs compile |",
                "|---|---:|---:|" + "---:|" * (len(backends) + 5),
            ]
            for key in keys:
                by = groups[key]
                best = best_fused(by)
                first = next(iter(by.values()))
                times = "".join(f" {fmt_time(by[b]['time_s']) if b in by else '–'} |" for b in backends)
                peaks = " / ".join(fmt_mb(by[b]["peak_bytes"]) if b in by else "–" for b in ("eager", "compile"))
                if best is None:
                    tail = f" – | – | – / {peaks} | – | – |"
                else:
                    s = best.get("speedup", {})
                    tail = (
                        f" {best['gbps']:.1f} | {best['pct_copy']:.0f} % | {fmt_mb(best['peak_bytes'])} / {peaks} "
                        f"| {_fmt_x(s.get('eager'))} | {_fmt_x(s.get('compile'))} |"
                    )
                lines.append(f"| {key[0]} | {key[2]} | {first['copy_gbps']:.1f} |{times}{tail}")
            lines.append("")
    return lines


def _full_table(records: list[dict]) -> list[str]:
    groups = _groups(records)
    backends = [b for b in ORDER if any(r["backend"] == b for r in records)]
    lines = [
        "## All configurations (median time per call; best fused backend's % of copy)",
        "",
        "| loss | K | N | dtype | mode |" + "".join(f" {b} |" for b in backends) + " % copy |",
        "|---|---:|---:|---|---|" + "---:|" * (len(backends) + 1),
    ]
    for key in sorted(groups):
        by = groups[key]
        best = best_fused(by)
        times = "".join(f" {fmt_time(by[b]['time_s']) if b in by else '–'} |" for b in backends)
        pct = f"{best['pct_copy']:.0f} %" if best else "–"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} |{times} {pct} |")
    return [*lines, ""]


def markdown(results: dict, plot_k: int = TARGET_K) -> str:
    meta, records = results["meta"], results["records"]
    lines = [
        f"# Benchmark: {meta['device']}",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"- commit {meta['git_commit']}, {meta['date']}; torch {meta['torch']}, triton {meta['triton']}, "
        f"liger-kernel {meta['liger-kernel']}; {meta['threads']} CPU threads",
        f"- backends: {', '.join(meta['backends'])}"
        + "".join(f"; {b} left out: {why}" for b, why in meta["left_out"].items()),
        f"- eps = {meta['eps']} logit bias (torch_ce / liger: none), mean reduction, labels uniform at random",
        f"- timing: {meta['timing']}; 1-min load average {meta.get('loadavg_start')} before, "
        f"{meta.get('loadavg_end')} after",
        f"- bandwidth model: {meta['bytes_model']}",
        f"- peak memory: {meta['peak_memory']}",
        "- speed-ups: best fused backend over the baseline, same configuration and mode",
        "",
    ]
    if results["gate_failures"]:
        lines += ["## CORRECTNESS GATE FAILURES", ""] + [f"- {f}" for f in results["gate_failures"]] + [""]
    lines += _targets_md(results)
    k = headline_k(records, plot_k)
    if k is not None:
        lines += ["## Headline tables", "", *_headline_tables(records, k)]
    lines += _full_table(records)
    if results["skipped"]:
        lines += [
            f"Skipped (N*K cap or memory estimate): {len(results['skipped'])} configuration(s), see the JSON.",
            "",
        ]
    return "\n".join(lines)


def _pick(records: list[dict], k: int, dtype: str, mode: str) -> tuple[list[dict], str]:
    """The records of the plotted slice, falling back to what was measured."""
    k = headline_k(records, k)
    dtypes = {r["dtype"] for r in records}
    dtype = dtype if dtype in dtypes else sorted(dtypes)[0]
    modes = {r["mode"] for r in records}
    mode = mode if mode in modes else sorted(modes)[0]
    sel = [r for r in records if r["k"] == k and r["dtype"] == dtype and r["mode"] == mode]
    return sel, f"K = {k}, {dtype}, {mode}"


def plots(results: dict, out: Path, stem: str, k: int, dtype: str, mode: str) -> list[Path]:
    """``<stem>-time.png`` (time vs N, log-log, a line per backend) and ``<stem>-copy.png``
    (fused backends' % of copy bandwidth vs N), one subplot per loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = results["records"]
    if not records:
        return []
    sel, title = _pick(records, k, dtype, mode)
    losses = list(dict.fromkeys(r["loss"] for r in sel))
    cols = min(4, len(losses))
    rows = math.ceil(len(losses) / cols)
    paths = []
    for kind in ("time", "copy"):
        height = 2.8 * rows + 0.8  # + room for the title and the legend above the subplots
        fig, axes = plt.subplots(rows, cols, figsize=(max(3.6 * cols, 7.0), height), squeeze=False)
        for ax, loss in zip(axes.flat, losses):
            mine = [r for r in sel if r["loss"] == loss]
            for b in ORDER:
                pts = sorted((r["n"], r) for r in mine if r["backend"] == b)
                if not pts or (kind == "copy" and b not in FUSED):
                    continue
                ys = [r["time_s"] * 1e6 if kind == "time" else r["pct_copy"] for _, r in pts]
                ax.plot([n for n, _ in pts], ys, marker="o", label=b)
            ax.set_xscale("log", base=2)
            if kind == "time":
                ax.set_yscale("log")
                ax.set_ylabel("µs per call")
            else:
                ax.set_ylabel("% of copy GB/s")
                ax.set_ylim(0, max(105.0, ax.get_ylim()[1]))
                if results["meta"]["device_type"] == "cuda":
                    ax.axhline(60 if loss == "bitemp" else 85, color="grey", ls="--", lw=0.8)
            ax.set_title(loss)
            ax.set_xlabel("N")
            ax.grid(True, which="both", alpha=0.3)
        for ax in axes.flat[len(losses) :]:
            ax.set_visible(False)
        legend: dict = {}  # a backend may appear in one subplot only (torch_ce, liger: ce)
        for ax in axes.flat:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(label, handle)
        top = 1 - 0.8 / height
        fig.legend(
            list(legend.values()),
            list(legend),
            loc="lower center",
            bbox_to_anchor=(0.5, top),
            ncol=max(1, len(legend)),
            frameon=False,
        )
        what = "time per call" if kind == "time" else "fused backends' share of copy bandwidth"
        fig.suptitle(f"{results['meta']['device']}: {what} ({title})", y=1 - 0.1 / height, va="top", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, top))
        path = out / f"{stem}-{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
