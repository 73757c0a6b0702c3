"""What bench/overload.py writes: the Markdown report with its targets table, and the figures it
reads from the server's /metrics page."""

from __future__ import annotations

from pathlib import Path


def metric_sum(text: str, name: str) -> float:
    """Sum of a metric's samples over its label sets in a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def batch_totals(text: str) -> tuple[float, float, float]:
    """(batches run, rows in them, engine seconds) so far, from a /metrics page."""
    return (
        metric_sum(text, "kbundle_engine_seconds_count"),
        metric_sum(text, "kbundle_batch_size_sum"),
        metric_sum(text, "kbundle_engine_seconds_sum"),
    )


def phase_batches(before: tuple[float, ...], after: tuple[float, ...]) -> dict:
    """Batches run in one phase, with their mean rows and engine time: the batcher's view of it."""
    count, rows, seconds = (b - a for a, b in zip(before, after, strict=True))
    return {
        "count": int(count),
        "mean_rows": round(rows / count, 1) if count else 0.0,
        "mean_ms": round(seconds / count * 1000, 2) if count else 0.0,
    }


def batch_figures(text: str) -> dict:
    """Mean engine time per batch and mean rows per batch over the whole run."""
    run = phase_batches((0.0, 0.0, 0.0), batch_totals(text))  # the whole run as one phase
    return {
        "mean_batch_ms": run["mean_ms"],
        "mean_batch_rows": run["mean_rows"],
        "dropped": {
            line.rsplit(" ", 1)[0].removeprefix("kbundle_"): float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("kbundle_requests_dropped_total{")
            or line.startswith(
                ("kbundle_grpc_calls_expired_total", "kbundle_grpc_calls_shed_total")
            )
        },
    }


def loop_lag_buckets(text: str) -> dict[str, float]:
    """kbundle_event_loop_lag_seconds's cumulative buckets (le -> samples) from /metrics text."""
    found = {}
    for line in text.splitlines():
        if line.startswith('kbundle_event_loop_lag_seconds_bucket{le="'):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            found[le] = float(line.rsplit(" ", 1)[1])
    return found


def loop_lag(before: dict[str, float], after: dict[str, float]) -> dict:
    """The server loop's lag over one phase: samples, the bucket bound that 99 % stayed under,
    and how many ran over 5 ms and over 50 ms late."""
    delta = {le: after[le] - before.get(le, 0.0) for le in after}
    samples = delta.get("+Inf", 0.0)
    bounds = sorted((float(le), n) for le, n in delta.items() if le != "+Inf")
    p99 = next((bound for bound, n in bounds if n >= 0.99 * samples), float("inf"))
    return {
        "samples": int(samples),
        "p99_at_most_ms": p99 * 1000,
        "over_5ms": int(samples - delta.get("0.005", 0.0)),
        "over_50ms": int(samples - delta.get("0.05", 0.0)),
    }


def targets(result: dict) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each issue-12 target."""
    o, batch = result["overload"], result["batches"]["mean_batch_ms"]
    limit = result["deadline_ms"] + batch
    re_p99 = o["resource_exhausted_p99_ms"]
    re_p99 = 0.0 if re_p99 != re_p99 else re_p99  # nan: none refused
    de_p99 = o["refused_p99_ms"].get("DEADLINE_EXCEEDED")
    de_text = "none missed its deadline" if de_p99 is None else f"{de_p99} ms"
    return [
        ("every answer correct", f"{o['wrong_answers']} wrong", o["wrong_answers"] == 0),
        (
            f"answered p99 <= deadline + one batch ({limit:.1f} ms)",
            f"{o['p99_ms']} ms",
            o["answered"] > 0 and o["p99_ms"] <= limit,
        ),
        ("RESOURCE_EXHAUSTED p99 <= 5 ms", f"{re_p99} ms", re_p99 <= 5),
        ("DEADLINE_EXCEEDED p99 lateness <= 5 ms", de_text, de_p99 is None or de_p99 <= 5),
        ("no other status code", str(o["other_codes"] or "none"), not o["other_codes"]),
        (
            "goodput >= 90 % of saturation",
            f"{o['goodput_vs_saturation'] * 100:.1f} %",
            o["goodput_vs_saturation"] >= 0.9,
        ),
    ]


CLIENTS = {
    "lean": "bench/grpc_load.py: HTTP/2 frames on uvloop, each caller's next call sent from the "
    "completion of its last, deadlines answered by the server and not timed out locally",
    "aio": "grpc.aio",
}
RAMP = (
    " The callers of each phase join over its first 100 ms; calls started in its first "
    "{ramp:g} s run but are not counted (the queue filling), so the figures are the steady state."
)


def write_markdown(path: Path, result: dict, config: str) -> None:
    s, o, b = result["saturation"], result["overload"], result["batches"]
    eager = result["overload_eager"]
    deadline = f"{result['deadline_ms']:g} ms deadlines"
    client = result.get("client", "aio")
    lines = [
        "# Overload: MLP predictor on one core, gRPC, deadlines",
        "",
        f"`python bench/overload.py --duration {result['duration_s']:g} --clients "
        f"{result['clients']} --client {client}`, {result['machine']}; load while measured: "
        f"`{result['uptime']}`.",
        "",
        f"The server (no flags; the model's kbundle.yaml: `{config.strip().replace(chr(10), ', ')}`"
        f") is pinned to one core, {result['clients']} client processes ({CLIENTS[client]}, one "
        "event loop each, the callers split between them) to the other. "
        + TIMING.get(client, TIMING["aio"])
        + "A DEADLINE_EXCEEDED refusal counts as its lateness, from the call's deadline to its "
        "status. In the overload phase a caller refused with "
        f"RESOURCE_EXHAUSTED waits {result['backoff_ms']:g} ms ± 20 % (the server's retry "
        "pushback for a full queue, with gRPC's backoff jitter) before its next call, as a "
        "well-behaved client does; the last phase has "
        "callers that retry at once, for comparison. Targets are judged on the overload phase. "
        "`RESOURCE_EXHAUSTED` = refused when the call's headers arrive, before its body is read "
        "(the model's queue full, or more calls held than the server's cap); with "
        "KBUNDLE_GRPC_SERVER=sync, `RESOURCE_EXHAUSTED shed` = refused by the handler pool after "
        "queueing, before decoding, once too little of its deadline was left."
        + (RAMP.format(ramp=result["ramp_s"]) if result.get("ramp_s") else ""),
        "",
        "| phase | answered/s | p50 / p99 ms | refused (p99 ms) | other | server CPU | client CPU "
        "| batches: rows / ms |",
        "|---|---:|---|---|---|---:|---:|---|",
        _phase_row(f"saturation c={result['saturation_concurrency']}, no deadline", s),
        _phase_row(f"overload c={result['concurrency']}, {deadline}", o),
    ]
    after = result.get("saturation_after")
    if after:
        lines.append(_phase_row(f"saturation c={result['saturation_concurrency']}, again", after))
    if eager:
        lines.append(_phase_row(f"overload c={result['concurrency']}, retry at once", eager))
    lines += [
        "",
        f"Goodput (answers within the deadline): overload {o['goodput_per_s']}/s = "
        f"{o['goodput_vs_saturation'] * 100:.1f} % of saturation"
        + (
            f" (the mean of the saturation phases before and after it, {s['answers_per_s']} and "
            f"{after['answers_per_s']}/s: this VM's speed drifts within a run)"
            if after
            else ""
        )
        + (
            f"; retry at once {eager['goodput_per_s']}/s = "
            f"{eager['goodput_vs_saturation'] * 100:.1f} %"
            if eager
            else ""
        )
        + f". Mean batch {b['mean_batch_rows']} rows in {b['mean_batch_ms']} ms (whole run). "
        f"Server peak RSS {result['server_peak_rss_mb']} MB. Right after: "
        f"{result['recovery_ok']} correct.",
        f"Server-side drops (`/metrics`, whole run): {b['dropped'] or 'none'}.",
        *caller_note(o),
        *lag_note(o.get("server_loop_lag"), o.get("client_loop_lag")),
        *client_note(result),
        "",
        "| target (issue 12) | measured | met |",
        "|---|---|---|",
        *(f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in targets(result)),
        "",
    ]
    path.write_text("\n".join(lines))


TIMING = {
    "lean": "Calls are timed on the wire: from the write that sent the call to the moment the "
    "client's kernel received the bytes that brought its status (SO_TIMESTAMPNS), so the client's "
    "own event-loop delays and its handling of the answers ahead in the same read are not "
    "counted. ",
    "aio": "Calls are timed from the caller's start to its status. ",
}


def caller_note(o: dict) -> list[str]:
    """The refusal p99 as the caller's callback saw it, beside the wire time (lean client)."""
    caller = o.get("resource_exhausted_caller_p99_ms")
    if caller is None or caller != caller:  # absent (aio client) or nan (none refused)
        return []
    return [
        f"RESOURCE_EXHAUSTED p99 in the overload phase as the callers' callbacks saw it (the "
        f"client's handling of the other answers in the same read included): {caller} ms; on the "
        f"wire: {o['resource_exhausted_p99_ms']} ms."
    ]


def lag_note(server: dict | None, client: dict | None = None) -> list[str]:
    if not server:
        return []
    text = (
        "Event-loop lag in the overload phase: server (`kbundle_event_loop_lag_seconds`, a timer "
        f"every 100 ms) {_lag(server)}"
    )
    if client:
        text += f"; client processes (the same probe every 10 ms, all summed) {_lag(client)}"
    return [text + "."]


def _lag(lag: dict) -> str:
    return (
        f"{lag['samples']} samples, 99 % at most {lag['p99_at_most_ms']:g} ms late, "
        f"{lag['over_5ms']} over 5 ms, {lag['over_50ms']} over 50 ms"
    )


def client_note(result: dict) -> list[str]:
    """A warning when the client core was the limit of a phase (then the client is measured)."""
    phases = [
        result["saturation"],
        result["overload"],
        result.get("saturation_after") or {},
        result["overload_eager"] or {},
    ]
    busiest = max(p.get("client_cpu_pct", 0) for p in phases)
    if busiest < 90:
        return []
    return [
        "",
        f"**The client core was busy ({busiest} % in the busiest phase):** latencies and "
        "goodput include the client's own event-loop delay there, not only the server's.",
    ]


def _phase_row(name: str, p: dict) -> str:
    refused = ", ".join(f"{k} {n} ({p['refused_p99_ms'][k]})" for k, n in p["refused"].items())
    return (
        f"| {name} | {p['answers_per_s']} | {p['p50_ms']} / {p['p99_ms']} | {refused or 'none'} "
        f"| {p['other_codes'] or 'none'} | {p['server_cpu_pct']} % | {p['client_cpu_pct']} % "
        f"| {_batches(p.get('batches'))} |"
    )


def _batches(b: dict | None) -> str:
    return "–" if not b else f"{b['mean_rows']} / {b['mean_ms']}"
