"""Knative revision and traffic rules, kept in a local state file (pure logic, no processes).

The rules follow KServe's ksvc reconciler (KSERVE_NOTES §5): a changed template makes a new
revision, the latest; with `canaryTrafficPercent: p` and an earlier rolled-out revision the latest
gets p% and the last rolled-out one 100-p% (tag `prev`); otherwise the latest gets 100%. A
revision counts as rolled out once it is ready at 100%. Removing the field therefore promotes,
0 pins the previous one (rollback). One revision here is the whole variant (predictor and its
transformer), not one per component: see docs/up.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kbundle.atomic import atomic_write

STATE_FILE = "state.json"


@dataclass
class Revision:
    name: str
    number: int
    template_hash: str
    manifest: dict[str, Any]  # the InferenceService document this revision was made from
    created: float = field(default_factory=time.time)


@dataclass
class RolloutState:
    isvc: str
    revisions: list[Revision] = field(default_factory=list)
    latest: str | None = None
    latest_rolled_out: str | None = None
    previous_rolled_out: str | None = None

    def revision(self, name: str) -> Revision:
        for rev in self.revisions:
            if rev.name == name:
                return rev
        raise KeyError(name)


def revision_name(isvc: str, number: int) -> str:
    return f"{isvc}-{number:05d}"


def add_revision_if_changed(
    state: RolloutState, template_hash: str, manifest: dict[str, Any]
) -> bool:
    """A new latest revision when the template differs from the latest one's; True when created."""
    if state.latest is not None and state.revision(state.latest).template_hash == template_hash:
        state.revision(
            state.latest
        ).manifest = manifest  # traffic-only edits still update the record
        return False
    number = max((r.number for r in state.revisions), default=0) + 1
    rev = Revision(revision_name(state.isvc, number), number, template_hash, manifest)
    state.revisions.append(rev)
    state.latest = rev.name
    return True


def traffic_for(state: RolloutState, canary_percent: int | None) -> dict[str, int]:
    """Revision -> percent, as the reconciler would route (the latest first)."""
    latest = state.latest
    if latest is None:
        return {}
    prev = state.latest_rolled_out
    if canary_percent is None or prev is None or prev == latest or canary_percent >= 100:
        return {latest: 100}
    return {latest: canary_percent, prev: 100 - canary_percent}


def record_ready_traffic(state: RolloutState, traffic: dict[str, int]) -> None:
    """Once the traffic is live: a latest revision at 100% becomes the latest rolled-out one."""
    latest = state.latest
    if latest is not None and traffic.get(latest) == 100 and state.latest_rolled_out != latest:
        state.previous_rolled_out = state.latest_rolled_out
        state.latest_rolled_out = latest


def prune(state: RolloutState, keep: int = 10) -> None:
    """Forget old revision records (never the latest or the rolled-out ones)."""
    pinned = {state.latest, state.latest_rolled_out, state.previous_rolled_out}
    extra = len(state.revisions) - keep
    for rev in list(state.revisions):
        if extra <= 0:
            break
        if rev.name not in pinned:
            state.revisions.remove(rev)
            extra -= 1


def load_state(folder: Path, isvc: str) -> RolloutState:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return RolloutState(isvc)
    data = json.loads(path.read_text())
    if data.get("isvc") != isvc:
        return RolloutState(isvc)
    data["revisions"] = [Revision(**r) for r in data.get("revisions", [])]
    return RolloutState(**data)


def save_state(folder: Path, state: RolloutState) -> None:
    write_json_atomic(Path(folder) / STATE_FILE, asdict(state))


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=1, default=str))
