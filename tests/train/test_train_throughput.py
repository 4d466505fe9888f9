"""The throughput probe: step and pipeline rates, the epoch bound, and the command line."""

import json
import math

import pytest
import torch
from PIL import Image

from robustkernels.backends import resolve_backend
from robustkernels.calibration import epsilon_for_classes
from robustkernels.train import throughput
from robustkernels.train.cli import main


def test_measure_step_variants_and_loss_share():
    results = throughput.measure_step(
        "smallcnn", num_classes=50, batch_size=8, image_size=16, loss="gce", epsilon=1.0, steps=2, warmup=1
    )
    assert [r.variant for r in results] == ["fused", "reference", "naive"]  # tests run from the checkout
    assert [r.backend for r in results] == [resolve_backend("auto", torch.device("cpu"))[0], "torch", "eager"]
    for r in results:
        assert 0 < r.loss_s < r.step_s and math.isfinite(r.step_s)
        assert r.images_per_s == pytest.approx(8 / r.step_s) and r.loss_share == pytest.approx(r.loss_s / r.step_s)
    with pytest.raises(ValueError, match="variants"):
        throughput.measure_step("smallcnn", 10, 4, 16, steps=1, warmup=0, variants=("fused", "compiled"))


def test_sample_jpegs_look_like_webvision(tmp_path):
    samples = throughput.make_sample_jpegs(str(tmp_path), count=6)
    assert len(samples) == 6
    for name, _ in samples:
        with Image.open(tmp_path / name) as img:
            assert img.format == "JPEG" and min(img.size) == 256 and max(img.size) <= 256 * 16 / 9 + 1


def test_pipeline_reads_given_images(tmp_path):
    throughput.make_sample_jpegs(str(tmp_path), count=3)
    (tmp_path / "notes.txt").write_text("not an image")
    out = throughput.measure_pipeline(workers=0, images=10, batch_size=4, image_size=32, image_root=str(tmp_path))
    assert out["images"] == 10 and out["images_per_s"] == pytest.approx(10 / out["seconds"])
    listing = tmp_path / "list.txt"
    listing.write_text("img00000.jpg 0\nimg00001.jpg 0\n")
    out = throughput.measure_pipeline(workers=0, images=4, batch_size=2, image_size=32, image_list=str(listing))
    assert out["images"] == 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        throughput.measure_pipeline(workers=0, images=4, image_root=str(tmp_path / "empty"))


def test_epoch_bound_takes_the_slower_side():
    # 8 ranks x 1000 images/s = 8000/s compute; 8 ranks x 10 workers x 50/s = 4000/s pipeline.
    out = throughput.epoch_seconds(2_400_000, 1000.0, 8, 50.0, 10)
    assert out["compute_bound_s"] == pytest.approx(300.0) and out["pipeline_bound_s"] == pytest.approx(600.0)
    assert out["epoch_s"] == pytest.approx(600.0)
    assert throughput.epoch_seconds(2_400_000, 1000.0, 8, None, 10)["epoch_s"] == pytest.approx(300.0)


def test_command_line_writes_json(tmp_path, capsys):
    out = tmp_path / "tp.json"
    argv = ["throughput", "--model", "smallcnn", "--image-size", "16", "--batch-size", "4", "--num-classes", "20"]
    argv += ["--steps", "1", "--warmup", "0", "--variants", "fused", "--workers", "0", "--pipeline-images", "8"]
    assert main([*argv, "--ranks", "2", "--workers-per-rank", "3", "--train-images", "1000", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "expected epoch (fused loss) of 1000 images on 2 such ranks" in printed
    record = json.loads(out.read_text())
    step, pipe = record["steps"][0], record["pipeline"]
    expected = max(1000 / (2 * step["images_per_s"]), 1000 / (2 * 3 * pipe["images_per_s"]))
    assert record["epoch"]["epoch_s"] == pytest.approx(expected)
    assert record["epsilon"] == pytest.approx(epsilon_for_classes(20))  # --epsilon auto
