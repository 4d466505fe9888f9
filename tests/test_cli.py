"""The ``robustkernels`` command: every subcommand, its errors, and ``python -m robustkernels``."""

import argparse
import subprocess
import sys
from pathlib import Path

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


def _status_and_error(argv, capsys):
    """Exit status of ``main(argv)`` whether argparse exits or ``main`` returns, and stderr."""
    try:
        status = cli.main(argv)
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


@pytest.fixture
def no_work(monkeypatch):
    """Makes any computation fail the test: the checks must come first."""

    def computed(*args, **kwargs):
        raise AssertionError("computed before the arguments were checked")

    for name in ("epsilon_for_classes", "mean_error", "transfer", "plot_error_figure", "plot_epsilon_figure"):
        monkeypatch.setattr(cli, name, computed)


def _bad_outputs(tmp_path):
    (tmp_path / "file.png").write_bytes(b"")
    return {
        "missing directory": (str(tmp_path / "nonexistent" / "x.png"), "does not exist"),
        "a directory": (str(tmp_path), "not a directory"),
        "unknown format": (str(tmp_path / "x.xyz"), "must end in a format matplotlib writes"),
        "no extension": (str(tmp_path / "figure"), "must end in a format matplotlib writes"),
        "parent is a file": (str(tmp_path / "file.png" / "x.png"), "does not exist"),
    }


PLOTS = [["plot-error", "--classes", "5", "--points", "5", "--samples", "64"], ["plot-epsilon", "--max-classes", "20"]]


@pytest.mark.parametrize("command", PLOTS, ids=lambda c: c[0])
@pytest.mark.parametrize(
    "case", ["missing directory", "a directory", "unknown format", "no extension", "parent is a file"]
)
def test_bad_output_is_refused_before_computing(command, case, tmp_path, capsys, no_work):
    """Before: plot-error computed the whole figure, then died with a FileNotFoundError traceback;
    `-o DIR` wrote DIR.png and a name without extension NAME.png, both reporting "wrote" the name
    given."""
    path, reason = _bad_outputs(tmp_path)[case]
    status, err = _status_and_error([*command, "-o", path], capsys)
    assert status == 2
    assert "argument -o/--output" in err and path in err and reason in err
    assert "Traceback" not in err
    assert not Path(path + ".png").exists()


def test_pgf_output_needs_its_tex_program(tmp_path, capsys, monkeypatch, no_work):
    """matplotlib lists .pgf but writes it through xelatex: without one, savefig raised a
    RuntimeError traceback after the computation."""
    monkeypatch.setattr(cli.shutil, "which", lambda program: None)
    status, err = _status_and_error(["plot-epsilon", "-o", str(tmp_path / "x.pgf")], capsys)
    assert status == 2 and "argument -o/--output" in err and "must end in a format" in err


def test_unwritable_output_is_refused(tmp_path, capsys, monkeypatch, no_work):
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)  # root may write anywhere
    status, err = _status_and_error(["plot-epsilon", "-o", str(tmp_path / "x.png")], capsys)
    assert status == 2 and "argument -o/--output" in err and "permission denied" in err


def test_failed_write_is_a_usage_error(tmp_path, capsys, monkeypatch):
    """A failure the checks cannot foresee (here a full disk) still names the option."""

    class Figure:
        def savefig(self, path, dpi):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "plot_epsilon_figure", lambda **kwargs: Figure())
    status, err = _status_and_error(["plot-epsilon", "-o", str(tmp_path / "x.png")], capsys)
    assert status == 2 and "-o/--output" in err and "No space left on device" in err


def _typed_actions():
    for name, command in cli.COMMANDS.items():
        parser = argparse.ArgumentParser()
        command.configure(parser)
        for action in parser._actions:
            if action.type is not None:
                yield name, action


@pytest.mark.parametrize("text", ["abc", "", "nan", "-inf", "1e999", "0", "-1", "2.5", "1" * 5000])
def test_every_type_function_explains_itself(text):
    """argparse prints "invalid <function name> value" when a type function raises ValueError
    (it did for --classes: "invalid _classes value"). Each must raise ArgumentTypeError with a
    message that says what is expected, in one line however long the input."""
    for command, action in _typed_actions():
        try:
            action.type(text)
        except argparse.ArgumentTypeError as err:
            message = str(err)
            assert message and "_" not in message.split(",")[0], (command, action.dest, message)
            assert len(message) < 400 or action.dest == "output", (command, action.dest, len(message))
        # any other exception escapes and fails the test


@pytest.mark.parametrize(
    "argv, option, expected",
    [
        (["epsilon", "--classes", "abc"], "--classes", "K must be an integer in [2, 2**63 - 1], got 'abc'"),
        (["epsilon", "--classes", "2.5"], "--classes", "K must be an integer"),
        (["epsilon", "--classes", "10", "--target", "nan"], "--target", "C must be a number in (0, 1)"),
        (["epsilon", "--classes", "10", "--target", "1"], "--target", "C must be a number in (0, 1)"),
        (["epsilon", "--classes", "10", "--logit-std", "inf"], "--logit-std", "must be a number in (0, 10000]"),
        (["epsilon", "--classes", "10", "--logit-std", "0"], "--logit-std", "must be a number in (0, 10000]"),
        (["epsilon", "--classes", "10", "--seed", "9" * 23], "--seed", "the seed must be an integer"),
        (["transfer", "--value", "nan"], "--value", "expected a finite number"),
        (["transfer", "--value", "5"], "--value", "outside its valid range (0, 1]"),
        (["transfer", "--param", "zz"], "--param", "gce has no parameter 'zz'"),
        (["transfer", "--samples", "0"], "--samples", "must be an integer >= 1"),
        (["transfer", "--samples", "100000000000"], "--samples", "pass samples <="),
        (["transfer", "--at", "nan"], "--at", "must be a number in [-10000, 10000]"),
        (["transfer", "--at", "-1e308"], "--at", "must be a number in [-10000, 10000]"),
        (["transfer", "--epsilon", "inf"], "--epsilon", "'auto' or a number"),
        (["transfer", "--set", "q=0.3"], "--set", "q is the parameter being transferred"),
        (["transfer", "--set", "q=oops"], "--set", "expected NAME=VALUE with a finite number"),
        (["transfer", "--to-classes", "100000000"], "--to-classes", "even one sample row is too much"),
        (["transfer", "--to-classes", "1000000000"], "--to-classes", "one sample row alone"),
        (["plot-error", "--points", "1e9"], "--points", "must be an integer in [2, 1001]"),
        (["plot-error", "--z-min", "-1e308"], "--z-min", "must be a number in [-10000, 10000]"),
        (["plot-error", "--epsilon", "1e300"], "--epsilon", "'auto' or a number"),
        (["plot-error", "--classes", "1000000000"], "--classes", "one sample row alone"),
        (["plot-error", "--classes", "200000", "--samples", "64"], "--classes", "samples <= 41 or fewer grid points"),
        (["plot-error", "--classes", *map(str, range(2, 13))], "--classes", "at most 10 values"),
        (["plot-error", "--loss", "gce", "--set", "q=7"], "--set", "outside its valid range"),
        (["plot-error", "--loss", "bitemp", "--set", "num_iters=2.5"], "--set", "must be an integer"),
        (["plot-error", "--loss", "nope"], "--loss", "invalid choice: 'nope'"),
        (["plot-epsilon", "--points", "0"], "--points", "must be an integer in [2, 200]"),
        (["plot-epsilon", "--target", "nan"], "--target", "C must be a number in (0, 1)"),
    ],
)
def test_bad_input_exits_2_naming_the_option(argv, option, expected, tmp_path, capsys, no_work):
    """Each subcommand with hostile values: status 2, one message naming the option, no
    traceback, and nothing computed. Before, some ran (--logit-std inf gave eps = -50,
    --set num_iters=2.5 ran with 2), some died in torch allocating 80 GB to 7 TB (--to-classes
    1e8, --samples 1e11) and some named no option."""
    defaults = {
        "transfer": ["--loss", "gce", "--param", "q", "--value", "0.7", "--from-classes", "10", "--to-classes", "20"],
        "plot-error": ["-o", str(tmp_path / "x.png")],
        "plot-epsilon": ["-o", str(tmp_path / "x.png")],
    }.get(argv[0], [])
    given = {word for word in argv[1:] if word.startswith("-")}
    base = []
    for i in range(0, len(defaults), 2):
        if defaults[i] not in given:
            base += defaults[i : i + 2]
    status, err = _status_and_error([argv[0], *base, *argv[1:]], capsys)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert status == 2, err
    assert len(errors) == 1 and option in errors[0] and expected in errors[0], err
    assert "Traceback" not in err


def test_negative_values_in_exponent_form_reach_the_type_function():
    """argparse takes "-1e3" and "-inf" for options; main joins them to the option before."""
    assert cli._attach_negative_values(["plot-error", "--z-min", "-1e3", "--z-max", "-4", "-o", "x.png"]) == [
        "plot-error", "--z-min=-1e3", "--z-max=-4", "-o", "x.png",
    ]  # fmt: skip
    assert cli._attach_negative_values(["--at", "-inf", "--loss", "-x"]) == ["--at=-inf", "--loss", "-x"]


def test_epsilon_for_huge_k(capsys):
    """1e8 classes used to be refused ("invalid _classes value") and, written out, took hours."""
    assert cli.main(["epsilon", "--classes", "100000000", "1e12"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows[0][:2] == ["100000000", f"{epsilon_for_classes(10**8):.3f}"]
    assert rows[1][:2] == ["1000000000000", f"{epsilon_for_classes(10**12):.3f}"]


def test_epsilon_paper_column_only_for_the_papers_setting(capsys, monkeypatch):
    """The paper's values are for logit_std = 1; beside eps(10) at 0.5 the column shows "-"."""
    monkeypatch.setattr(cli, "epsilon_for_classes", lambda k, target, **kw: 0.477)
    assert cli.main(["epsilon", "--classes", "10", "--logit-std", "0.5"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[-1] == "-"


def test_plot_error_auto_bias_uses_the_logit_std(monkeypatch):
    """The shifted histogram is N(eps(K), s^2): eps(K) must be the one for that s."""
    seen = []
    monkeypatch.setattr(cli, "epsilon_for_classes", lambda k, **kw: seen.append((k, kw)) or 1.0)
    assert cli._bias("auto", 50, 2.0, 3) == 1.0
    assert seen == [(50, {"logit_std": 2.0, "seed": 3})]


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
