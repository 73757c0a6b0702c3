"""Standard (RawDeployment) mode: `spec.canary[]` entries are extra predictors with fixed percentages."""

from __future__ import annotations

import collections
import math

import requests
from up_harness import digits_rows, infer_json, revision_of, up_fixture, wait_for

REQUESTS = 200


up = up_fixture("digits-standard.yaml", "up-standard")


def test_spec_canary_gets_its_traffic_percent(up):
    assert up.traffic() == {"digits-std-predictor": 75, "digits-std-digits-v2": 25}
    rows, _ = digits_rows(1)
    with requests.Session() as session:
        counts = collections.Counter(
            revision_of(*infer_json(up, rows, session=session)) for _ in range(REQUESTS)
        )
    mean, sd = REQUESTS * 0.25, math.sqrt(REQUESTS * 0.25 * 0.75)
    assert abs(counts["digits-std-digits-v2"] - mean) <= 4 * sd, counts
    assert counts["digits-std-predictor"] + counts["digits-std-digits-v2"] == REQUESTS


def test_removing_the_canary_entry_sends_everything_to_the_main_predictor(up):
    doc = up.read()
    del doc["spec"]["canary"]
    up.write(doc)
    wait_for(lambda: up.traffic() == {"digits-std-predictor": 100}, 30, "canary removed", up)
    rows, _ = digits_rows(1)
    assert {revision_of(*infer_json(up, rows)) for _ in range(30)} == {"digits-std-predictor"}


def test_killing_kbundle_up_outright_leaves_no_orphan_component(up):
    import signal

    pids = [c["pid"] for r in up.status()["revisions"] for c in r["components"] if c["pid"]]
    assert pids
    up.proc.send_signal(signal.SIGKILL)  # no drain, no cleanup code runs in kbundle up
    up.proc.wait(10)

    def gone(pid: int) -> bool:
        try:  # a zombie (exited, not yet reaped by whoever adopted it) counts as gone
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    def all_gone() -> bool:
        return all(gone(pid) for pid in pids)

    wait_for(all_gone, 30, "children gone after kbundle up was killed", up)
