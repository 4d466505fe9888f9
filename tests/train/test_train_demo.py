"""The main job in its shortened form, through the real command line."""

import os
import re
import subprocess
import sys


def test_demo_quick_shows_the_logit_bias_effect(tmp_path):
    figure = tmp_path / "demo_curves.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "robustkernels.train",
            "demo",
            "--quick",
            "--out",
            str(tmp_path),
            "--figure",
            str(figure),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "1000 classes" in out and figure.stat().st_size > 10_000
    rows = dict(re.findall(r"^\s*(ce|mae|mae\+eps\(K\))\s+([\d.]+)%", out, flags=re.M))
    top1 = {k: float(v) for k, v in rows.items()}
    assert set(top1) == {"ce", "mae", "mae+eps(K)"}, out
    # Chance is 0.1 %. MAE without the bias stays there; with eps(K) it learns; CE learns.
    # (Measured with these settings: ce ~58 %, mae 0.1 %, mae+eps(K) ~21 %.)
    assert top1["mae"] < 1.0
    assert top1["mae+eps(K)"] > 8.0
    assert top1["ce"] > 25.0
    for label in ("ce", "mae", "mae+eps(K)"):
        assert (tmp_path / label / "log.jsonl").exists()
