"""V2 JSON request pieces for tests that send what a plain JSON client sends."""

from __future__ import annotations

import base64


def base64_input(name: str, values: list[bytes]) -> dict:
    """A BYTES [N] input whose elements travel as base64 text (binary data in V2 JSON)."""
    return {
        "name": name,
        "datatype": "BYTES",
        "shape": [len(values)],
        "data": [base64.b64encode(value).decode() for value in values],
    }
