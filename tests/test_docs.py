"""The README's loss table is generated from the specs and must not drift from them."""

from pathlib import Path

from robustkernels._docs import readme_block

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_loss_table_matches_specs():
    assert readme_block() in README.read_text(), "regenerate with `python -m robustkernels._docs`"
