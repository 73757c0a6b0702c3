"""Claims that verify themselves: every measured figure the docs quote is in a committed result file
that a committed script writes, and result files hold only what their script writes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
# A figure: a number with a thousands separator or a decimal part (plain integers are settings,
# concurrencies and batch sizes). Settings and versions written as decimals are listed here.
FIGURE = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.,])\d+\.\d+(?![\w.])")
NOT_MEASURED = {"0.5", "3.11", "2.51.0", "2.38", "2.36"}


def _prose(text: str) -> str:
    """The text without code (commands, not claims) and without targets ("≥ 3,000")."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"≥ [\d,.]+", "", text)  # targets, not measurements
    return re.sub(r"`[^`]*`", "", text)


def _result_numbers() -> set[str]:
    found: set[str] = set()
    for path in RESULTS.iterdir():
        if path.suffix in (".md", ".csv", ".txt", ".json"):
            found |= set(re.findall(r"\d+(?:\.\d+)?", path.read_text()))
    return found


def figures(text: str) -> list[str]:
    return [f for f in FIGURE.findall(_prose(text)) if f not in NOT_MEASURED]


def test_figure_pattern_finds_what_a_reader_would_call_a_figure():
    text = "MLP 3,872 infer/s (p50 0.47 ms), `bash run.sh -p 1000`, 9.0 rows, version 2.51.0"
    assert figures(text) == ["3,872", "0.47", "9.0"]


def test_every_figure_in_benchmarks_md_is_in_bench_results():
    quoted = figures((ROOT / "docs" / "benchmarks.md").read_text())
    assert len(quoted) > 50  # the results table is there
    known = _result_numbers()
    missing = sorted({f for f in quoted if f.replace(",", "") not in known})
    assert not missing, f"figures in docs/benchmarks.md found in no bench/results file: {missing}"


def test_a_made_up_figure_would_be_caught():
    known = _result_numbers()
    made_up = next(n for n in range(4600, 9999) if str(n) not in known)
    assert figures(f"MLP REST {made_up:,} infer/s (≥ 3,000)") == [f"{made_up:,}"]


@pytest.mark.parametrize("doc", ["transformer.md", "benchmarks.md"])
def test_hop_figures_quoted_in_docs_are_in_the_hop_result(doc):
    hop = (RESULTS / "transformer_hop.md").read_text()
    text = (ROOT / "docs" / doc).read_text()
    for figure in re.findall(r"[+]?\d+\.\d{3}(?= ms)", _prose(text)):
        assert figure.lstrip("+") in hop, figure


def test_transformer_hop_result_holds_only_what_the_script_writes():
    """bench/transformer_hop.py writes a title, the command, the machine line and two tables;
    prose added by hand would be erased by the next run, so it belongs in docs/."""
    script = (ROOT / "bench" / "transformer_hop.py").read_text()
    assert "--write" in script
    for line in (RESULTS / "transformer_hop.md").read_text().splitlines():
        assert (
            not line.strip()
            or line.startswith("|")
            or line == "# Transformer hop latency"
            or line.startswith("`python bench/transformer_hop.py")
            or line.startswith("Machine: ")
        ), f"not written by bench/transformer_hop.py: {line!r}"


def test_every_result_file_has_a_committed_writer():
    """Each file in bench/results is named by the script that writes it."""
    scripts = "".join(p.read_text() for p in (ROOT / "bench").glob("*.py"))
    scripts += (ROOT / "bench" / "run.sh").read_text()
    scripts += (ROOT / "scripts" / "images.sh").read_text()  # `images.sh sizes` -> images.md
    for path in RESULTS.iterdir():
        stem = re.sub(r"^profile_\w+$", "profile_", path.stem)
        stem = re.sub(r"-cpu$", "", stem)
        assert stem in scripts, f"{path.name}: no script in bench/ writes it"


def test_readme_and_gpu_doc_say_the_gpu_paths_have_not_run_on_a_gpu():
    """Until a GPU result is committed (bench/results/gpu_engines-cuda.*), both must say so."""
    if list(RESULTS.glob("gpu_engines-cuda*")):
        pytest.skip("a GPU run is committed: the docs may now say which paths ran")
    assert "have not run on a GPU" in (ROOT / "README.md").read_text()
    assert "has run on a GPU yet" in (ROOT / "docs" / "gpu-engines.md").read_text()


def test_every_setting_the_readme_lists_exists():
    """A documented setting nothing reads (as `labels` was) fails here."""
    from kbundle.settings import ModelSettings

    text = (ROOT / "README.md").read_text()
    table = text[text.index("| setting (`kbundle.yaml` key) |") :].split("\n\n", 1)[0]
    listed = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert len(listed) > 5
    assert set(listed) <= set(ModelSettings.field_names()), set(listed) - set(
        ModelSettings.field_names()
    )


def test_no_absolute_path_of_one_machine_in_the_repository():
    """Paths like /work/..., /root/... or someone's home break on every other machine."""
    import subprocess

    found = subprocess.run(
        ["git", "-C", str(ROOT), "grep", "-nE", r"/(work|root|home)/[A-Za-z]"],
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    # /home/kbundle is the images' own user home, a path inside the container
    machine = re.compile(r"/(work|root)/\w|/home/(?!kbundle\b)\w")
    found = [
        line
        for line in found
        if machine.search(line) and not line.startswith("tests/docs/test_claims.py")
    ]
    assert not found, found
