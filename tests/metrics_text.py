"""Reading a server's /metrics text in tests."""

from __future__ import annotations

import re
import urllib.request


def samples(http_url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric `name` as (labels, value)."""
    text = urllib.request.urlopen(f"http://{http_url}/metrics", timeout=10).read().decode()
    out = []
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
            out.append((labels, float(m.group(2))))
    return out


def total(http_url: str, name: str, **labels: str) -> float:
    return sum(
        value
        for found, value in samples(http_url, name)
        if all(found.get(k) == v for k, v in labels.items())
    )
