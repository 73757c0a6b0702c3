"""The README's predictor settings table names every setting with its flag, env var and default
(issue 12: "Every setting in the README's settings table with its default and its
flag/env/kbundle.yaml names"), so a setting added to kbundle.settings without docs fails here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kbundle.settings import ModelSettings, env_name

README = Path(__file__).resolve().parents[2] / "README.md"
HEADER = "| setting (`kbundle.yaml` key) | flag | env | default | meaning |"


def table_rows() -> dict[str, list[str]]:
    lines = README.read_text().splitlines()
    start = lines.index(HEADER) + 2
    rows: dict[str, list[str]] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows[cells[0].strip("`")] = cells
    return rows


def documented_default(value: object) -> str:
    """How the table writes a default: YAML spelling, tuples as min,opt,max lists."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    if value is None:
        return "none"
    if value == "":
        return '""'
    return str(value).strip("`")


def test_every_setting_has_its_flag_env_and_default_in_the_readme_table():
    rows = table_rows()
    fields = {f.name: f for f in dataclasses.fields(ModelSettings)}
    assert sorted(rows) == sorted(fields)
    for name, f in fields.items():
        key, flag, env, default, meaning = rows[name][:5]
        assert (flag, env) == (f"`--{name}`", f"`{env_name(name)}`"), rows[name]
        assert meaning, name
        if name == "execution_providers":  # empty = an order the meaning spells out
            continue
        written = default.strip("`").split(" ")[0]
        if isinstance(f.default, (int, float)) and not isinstance(f.default, bool):
            assert float(written) == f.default, (name, default, f.default)
        else:
            assert written == documented_default(f.default), (name, default, f.default)
