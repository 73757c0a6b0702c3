"""The first example of the README and of docs/up.md, run as written against `kbundle up` on the
committed inferenceservices/digits.yaml: the request body each one sends must be what that
service's transformer takes (an `image`), and the answer carries its `labels`."""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from pathlib import Path

import pytest
from up_harness import start_up

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pristine import REPO, committed  # noqa: E402

CURL = re.compile(r"curl -s localhost:8080(?P<path>\S+) .*-d @(?P<body>\S+)")


def first_curl(doc: str) -> re.Match:
    """The first `curl` of the document's bash blocks (it must send a file: `-d @FILE`)."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / doc).read_text(), re.S)
    block = next(b for b in blocks if "curl " in b)
    match = CURL.search(block)
    assert match, f"{doc}: its first curl is not `curl -s localhost:8080... -d @FILE`"
    return match


@pytest.fixture(scope="module")
def up(tmp_path_factory, sample_models: Path):
    proc = start_up(committed("inferenceservices/digits.yaml"), tmp_path_factory.mktemp("docs"))
    yield proc
    proc.stop()


@pytest.mark.parametrize("doc", ["README.md", "docs/up.md"])
def test_first_example_is_answered_with_labels(up, doc):
    match = first_curl(doc)
    body = (REPO / match["body"]).read_bytes()
    assert [i["name"] for i in json.loads(body)["inputs"]] == ["image"]
    request = urllib.request.Request(
        f"http://{up.rest_url}{match['path']}",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        answer = json.loads(resp.read())
    labels = next(o for o in answer["outputs"] if o["name"] == "labels")
    assert labels["shape"] == [1, 3] and labels["data"][0] == "7", answer
