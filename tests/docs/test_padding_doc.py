"""docs/batching.md quotes the padding benchmark only as bench/padding.py wrote it: the block
between its markers holds the committed result's load lines, table and ratios, verbatim."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START = "<!-- padding-table (bench/padding.py --write) -->"
END = "<!-- /padding-table -->"


def _block() -> list[str]:
    text = (ROOT / "docs" / "batching.md").read_text()
    inside = text.split(START, 1)[1].split(END, 1)[0]
    return [line for line in inside.splitlines() if line.strip()]


def test_the_docs_padding_table_is_the_committed_result_verbatim() -> None:
    block = _block()
    result = (ROOT / "bench" / "results" / "padding.md").read_text().splitlines()
    assert any(line.startswith("| padding off |") for line in block)
    missing = [line for line in block if line not in result]
    assert not missing, f"docs/batching.md padding lines not in bench/results/padding.md: {missing}"


def test_the_docs_quote_the_table_with_its_load() -> None:
    assert sum(line.startswith(("- load before", "- load after")) for line in _block()) == 2
