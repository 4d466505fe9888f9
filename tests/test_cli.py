"""The ``robustkernels`` command: every subcommand, its errors, and ``python -m robustkernels``."""

import argparse
import subprocess
import sys

import pytest

from robustkernels import cli
from robustkernels.calibration import epsilon_for_classes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_epsilon_prints_eq4_closed_form_and_paper(capsys):
    assert cli.main(["epsilon", "--classes", "10", "1000", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "K"
    rows = {int(line.split()[0]): line.split()[1:] for line in lines[1:]}
    assert rows[10] == [f"{epsilon_for_classes(10):.3f}", "0.463", "0.5"]
    assert rows[1000] == [f"{epsilon_for_classes(1000):.3f}", "5.172", "5.2"]
    assert rows[50][2] == "-"  # the paper quotes no value for K = 50


def test_transfer_prints_the_papers_gce_example(capsys):
    args = ["transfer", "--loss", "gce", "--param", "q", "--value", "0.7", "--from-classes", "100"]
    assert cli.main([*args, "--to-classes", "1000"]) == 0
    out = capsys.readouterr().out
    assert "gce.q = 0.7 at K = 100  ->  gce.q = 0.4816 at K = 1000" in out
    before, after = (float(part.split(" at K")[0].split("= ")[-1]) for part in out.splitlines()[1].split(", "))
    assert after == pytest.approx(before, rel=1e-6)


def test_transfer_with_fixed_parameter(capsys):
    args = ["transfer", "--loss", "agce", "--param", "q", "--value", "0.6", "--set", "a=0.05"]
    assert cli.main([*args, "--from-classes", "20", "--to-classes", "60", "--samples", "800"]) == 0
    assert "agce.q = 0.6 at K = 20  ->  agce.q = " in capsys.readouterr().out


def test_transfer_unreachable_is_a_clean_error(capsys):
    args = ["transfer", "--loss", "agce", "--param", "a", "--value", "0.6", "--from-classes", "10"]
    assert cli.main([*args, "--to-classes", "100", "--samples", "300"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustkernels transfer: error: no agce.a in (0, inf)")
    assert "Traceback" not in err


def test_set_of_an_unknown_parameter_is_rejected(capsys):
    args = ["transfer", "--loss", "gce", "--param", "q", "--value", "0.7", "--set", "gamma=2"]
    assert cli.main([*args, "--from-classes", "10", "--to-classes", "20"]) == 2
    assert "--set: gamma is not a parameter of gce" in capsys.readouterr().err


def test_plot_error_writes_a_png(tmp_path, capsys):
    out = tmp_path / "error.png"
    args = ["plot-error", "--loss", "mae", "gce", "--classes", "5", "20", "--epsilon", "auto", "--set", "q=0.5"]
    assert cli.main([*args, "--points", "9", "--samples", "256", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert f"wrote {out}" in capsys.readouterr().out


def test_plot_error_rejects_a_bad_range(tmp_path, capsys):
    args = ["plot-error", "--classes", "5", "--z-min", "3", "--z-max", "1", "-o", str(tmp_path / "x.png")]
    assert cli.main(args) == 2
    assert "--z-min" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_plot_epsilon_writes_a_png(tmp_path):
    out = tmp_path / "eps.png"
    assert cli.main(["plot-epsilon", "--max-classes", "200", "--points", "4", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["epsilon"],
        ["epsilon", "--classes", "1"],
        ["transfer", "--loss", "nope", "--param", "q", "--value", "1", "--from-classes", "2", "--to-classes", "3"],
        ["plot-error", "--epsilon", "big", "-o", "x.png"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_commands_dict_is_the_extension_point(monkeypatch, capsys):
    """A new subcommand (e.g. ``train``) is one entry in COMMANDS."""

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--word", default="hi")

    def run(args: argparse.Namespace) -> int:
        print(f"said {args.word}")
        return 7

    monkeypatch.setitem(cli.COMMANDS, "say", cli.Command("say a word", configure, run))
    assert cli.main(["say", "--word", "ok"]) == 7
    assert capsys.readouterr().out == "said ok\n"


def test_python_dash_m_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "robustkernels", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    for name in ("epsilon", "transfer", "plot-error", "plot-epsilon"):
        assert name in result.stdout
