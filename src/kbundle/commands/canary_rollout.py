"""`kbundle canary rollout FILE`: a progressive rollout by manifest edits.

    kbundle canary rollout FILE (--storage-uri URI | --image IMG) [--steps 10,25,50]
        [--interval 5m] [--prometheus URL [--namespace NS]] [--apply 'kubectl apply -f {file}']
    kbundle canary rollout FILE --abort [--apply CMD]

Each step: set the canary's share (the comment-keeping edit, written only if the file is still
what the rollout last wrote), apply it (--apply; without it `kbundle up` or GitOps picks the file
up), bake for the interval, analyze the interval's traffic, then advance, hold (bake again, up to
--max-holds times) or roll back. After the last step: promote. A state file beside the manifest
makes an interrupted rollout resumable (rerun the same command); --abort rolls it back.
Exit codes as `canary analyze`: 0 promoted, 3 held (state kept), 4 rolled back, 1 error.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from kbundle.commands import canary_rollout_state as st
from kbundle.commands.canary_analyze import EXIT, add_threshold_arguments, analyze, duration_s


class RolloutError(Exception):
    """The rollout stops here; the one-line message says why and what to do."""


def _steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps: integers like 10,25,50, got {text!r}") from None
    if not steps or any(not 0 < s < 100 for s in steps) or steps != sorted(set(steps)):
        raise argparse.ArgumentTypeError(f"--steps: increasing percentages in 1-99, got {text!r}")
    return steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kbundle.local.analysis import Thresholds

    parser.add_argument("file", type=Path, help="manifest holding the InferenceService")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--storage-uri", default=None, help="the candidate model URI")
    what.add_argument("--image", default=None, help="the candidate predictor image")
    parser.add_argument("--steps", type=_steps, default=[10, 25, 50], help="default 10,25,50")
    parser.add_argument("--interval", type=duration_s, default=300, help="bake per step (5m)")
    parser.add_argument("--max-holds", type=int, default=3, help="bakes of one step before exit 3")
    parser.add_argument("--prometheus", default=None, help="analyze with this Prometheus")
    parser.add_argument("--namespace", default=None, help="with --prometheus")
    parser.add_argument("--component", default="predictor", help="with --prometheus")
    parser.add_argument("--warmup", type=duration_s, default=10, help="with --prometheus")
    parser.add_argument("--apply", default=None, help="command run after each edit; {file}")
    parser.add_argument("--name", default=None, help="InferenceService in a multi-document file")
    parser.add_argument(
        "--state-dir", default=None, help="the running kbundle up's, if not default"
    )
    parser.add_argument("--abort", action="store_true", help="roll back the rollout in progress")
    parser.add_argument(
        "--accept-edits",
        action="store_true",
        help="continue/abort on the file as it is now, after someone else edited it",
    )
    parser.add_argument("--wait-timeout", type=duration_s, default=300, help=argparse.SUPPRESS)
    add_threshold_arguments(parser, Thresholds())


def run(args: argparse.Namespace) -> int:
    from kbundle.errors import ConfigError
    from kbundle.local.prometheus import PromError

    stopped_by: dict[str, int] = {}
    previous = _stop_on_signals(stopped_by)
    try:
        with st.exclusive(args.file):
            return _abort(args) if args.abort else _rollout(args)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: state kept in {st.state_path(args.file)}; run the same command to "
            "resume, or add --abort to roll back",
            file=sys.stderr,
        )
        return 128 + stopped_by.get("signal", signal.SIGINT)
    except (RolloutError, st.RolloutBusy, ConfigError, PromError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_on_signals(stopped_by: dict[str, int]) -> dict[int, object]:
    """SIGINT and SIGTERM both stop the rollout at the next safe point, state kept (returns the
    handlers it replaced). SIGINT is set explicitly: a rollout started in the background by a
    non-interactive shell inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt (`kill -INT` did nothing for a whole bake). SIGTERM is what a cancelled CI
    job or a deleted pod sends."""

    def stop(signum: int, _frame: object) -> None:
        stopped_by["signal"] = signum
        raise KeyboardInterrupt

    previous: dict[int, object] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous  # only the main thread may set handlers (an embedding caller's thread)
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, stop)
    return previous


def _isvc_name(args: argparse.Namespace) -> str:
    from kbundle.manifests.canary_steps import CanaryError, parse_docs, select_target

    try:
        return select_target(
            parse_docs(args.file.read_text(), args.file), args.file, args.name
        ).name
    except CanaryError as exc:
        raise RolloutError(str(exc)) from None


def _rollout(args: argparse.Namespace) -> int:
    if not (args.storage_uri or args.image):
        raise RolloutError("give the candidate: --storage-uri URI or --image IMAGE")
    args.name = _isvc_name(args)
    state = st.load(args.file)
    if state is not None and not state.same_target(args.storage_uri, args.image, args.steps):
        raise RolloutError(
            f"a rollout of {state.storage_uri or state.image} (steps {state.steps}) is in "
            f"progress on {args.file}; rerun it as it was started, or --abort it"
        )
    if state is None:
        state = st.RolloutState(str(args.file), args.storage_uri, args.image, args.steps)
        state.digest = _digest(args.file)
    else:
        print(f"resuming at step {state.step + 1} of {len(state.steps)}")
    while state.step < len(state.steps):
        percent = state.steps[state.step]
        if state.edited_step != state.step:
            _edit(args, state, "set", percent)
            state.edited_step, state.step_started, state.holds = state.step, time.time(), 0
            st.save(args.file, state)
        _bake(args, state)
        result = _analyze(args, state.step_started)
        _record(state, percent, result)
        if result.action == "roll back":
            _edit(args, state, "rollback", 0)
            return _finish(args, state, "rolled back", EXIT["roll back"])
        if result.action == "hold":
            state.holds += 1
            if state.holds >= args.max_holds:
                st.save(args.file, state)
                print(f"held {state.holds} times at {percent}%: rerun to keep baking, or --abort")
                return EXIT["hold"]
            state.step_started = time.time()
        else:
            state.step += 1
        st.save(args.file, state)
    _edit(args, state, "promote", 100)
    return _finish(args, state, "promoted", EXIT["promote"])


def _abort(args: argparse.Namespace) -> int:
    state = st.load(args.file)
    if state is None:
        raise RolloutError(f"no rollout in progress on {args.file} (nothing to abort)")
    args.name = _isvc_name(args)
    if state.edited_step >= 0:
        _edit(args, state, "rollback", 0)
    return _finish(args, state, "aborted (rolled back)", 0)


def _finish(args: argparse.Namespace, state: st.RolloutState, outcome: str, code: int) -> int:
    st.remove(args.file)
    print(f"rollout {outcome}: {args.file}")
    print_timeline(state)
    return code


def _digest(path: Path) -> str:
    from kbundle.atomic import read_with_digest

    return read_with_digest(path)[1]


def _edit(args: argparse.Namespace, state: st.RolloutState, action: str, percent: int) -> None:
    """One canary edit, written only if the file is what the rollout last wrote; then apply."""
    from kbundle.atomic import FileChanged, atomic_write, digest, read_with_digest
    from kbundle.manifests import canary

    raw, seen = read_with_digest(args.file)
    if args.accept_edits:
        state.digest = seen
    if seen not in (state.digest, state.pending):
        raise RolloutError(
            f"{args.file} changed since the rollout last wrote it (someone else's edit?); "
            "nothing written: check it, then rerun with --accept-edits (or --abort --accept-edits)"
        )
    text, common = raw.decode("utf-8"), {"name": args.name}
    try:
        if action == "set":
            plan = canary.set_canary(
                args.file, text, percent, state.storage_uri, state.image, **common
            )
        elif action == "promote":
            plan = canary.promote(args.file, text, **common)
        else:
            plan = canary.rollback(args.file, text, **common)
        if plan.changed:
            state.pending = digest(plan.new.encode("utf-8"))
            st.save(args.file, state)
            atomic_write(args.file, plan.new, expect_digest=seen)
    except (canary.CanaryError, FileChanged) as exc:
        raise RolloutError(str(exc)) from exc
    state.digest, state.pending = _digest(args.file), ""
    st.save(args.file, state)
    print(f"{time.strftime('%H:%M:%S')} {action} {percent}%: {args.file}", flush=True)
    _apply(args, action, percent)


def _apply(args: argparse.Namespace, action: str, percent: int) -> None:
    if args.apply:
        command = args.apply.replace("{file}", shlex.quote(str(args.file)))
        done = subprocess.run(command, shell=True, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            raise RolloutError(f"--apply exited {done.returncode}: {last[0]}")
    else:
        _wait_for_up(args, action, percent)


def _wait_for_up(args: argparse.Namespace, action: str, percent: int) -> None:
    """Until a running `kbundle up` routes the edited split on ready revisions; with none running
    (GitOps), the bake gives the controller time to pick the file up."""
    from kbundle.commands.up import state_root
    from kbundle.errors import ConfigError
    from kbundle.local.client import fetch_status, find_running

    try:
        up = find_running(state_root(args.state_dir), args.name)
    except ConfigError:
        if args.prometheus or args.abort:
            print("no local kbundle up: GitOps (or --apply) applies the file")
            return
        raise
    deadline = time.monotonic() + args.wait_timeout
    while time.monotonic() < deadline:
        revisions = fetch_status(up)["revisions"]
        latest = [r for r in revisions if r["tag"] == "latest"]
        want = {"set": percent, "rollback": 0, "promote": 100}[action]
        routed = [r for r in revisions if r["traffic"] > 0]
        if latest and latest[0]["traffic"] == want and all(r["state"] == "ready" for r in routed):
            return
        time.sleep(0.2)
    raise RolloutError(f"kbundle up did not route {percent}% within {args.wait_timeout}s")


def _bake(args: argparse.Namespace, state: st.RolloutState) -> None:
    left = state.step_started + args.interval - time.time()
    if left > 0:
        print(f"baking {left:.0f}s at {state.steps[state.step]}%", flush=True)
        time.sleep(left)


def _analyze(args: argparse.Namespace, since: float):
    """The analysis of the traffic since the step went live."""
    window = argparse.Namespace(**vars(args))
    window.window = max(int(time.time() - since), 1)
    window.explain = False
    return analyze(window)


def _record(state: st.RolloutState, percent: int, result) -> None:
    canary = result.figures.get(result.canary or "", {})
    previous = result.figures.get(result.previous or "", {})
    row = {
        "step": state.step + 1,
        "traffic": percent,
        "requests": canary.get("requests", 0),
        "error_rate": canary.get("error_rate", 0.0),
        "p50": [canary.get("p50_ms"), previous.get("p50_ms")],
        "p99": [canary.get("p99_ms"), previous.get("p99_ms")],
        "decision": result.action,
        "why": "; ".join(result.reasons),
    }
    state.timeline.append(row)
    print(_row(row), flush=True)
    for reason in result.reasons:
        print(f"       - {reason}", flush=True)


def _ms(pair: list) -> str:
    return "/".join("-" if v is None else f"{v:.1f}" for v in pair)


def _row(r: dict) -> str:
    return (
        f"{r['step']:>4} {r['traffic']:>6}% {r['requests']:>8} {r['error_rate']:>9.2%} "
        f"{_ms(r['p50']):>13} {_ms(r['p99']):>13}  {r['decision']}"
    )


def print_timeline(state: st.RolloutState) -> None:
    print("step traffic requests errorrate p50 new/prev ms p99 new/prev ms  decision")
    for row in state.timeline:
        print(_row(row))
