"""Our predictor's own settings in a manifest: `KBUNDLE_*` env on the predictor container.

A misspelt name is silently ignored by the predictor (warning); a value it cannot read makes it
exit at start-up, i.e. a crash-looping revision (error). The check runs the predictor's own
settings resolution (`kbundle.settings`), so it cannot drift from what the container does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kbundle.manifests import isvc
from kbundle.manifests.findings import Issue, error, warning

PREFIX = "KBUNDLE_"


def check(obj: dict[str, Any]) -> list[Issue]:
    issues: list[Issue] = []
    for name, path, comp in isvc.serving_units(obj):
        main = isvc.main_container(comp, path) if name == "predictor" else None
        if main is not None and "containers" in main[0]:
            issues += _container(*main)
    return issues


def _container(path: isvc.Path_, container: dict[str, Any]) -> Iterator[Issue]:
    env = [
        (i, e)
        for i, e in enumerate(container.get("env") or [])
        if isinstance(e, dict) and str(e.get("name", "")).startswith(PREFIX)
    ]
    if not env:
        return
    from kbundle.errors import ConfigError  # imported only when needed: pulls in grpc
    from kbundle.settings import resolve_settings, unknown_env_vars

    for index, item in env:
        var, where = str(item["name"]), (*path, "env", index)
        unknown = unknown_env_vars({var: ""})
        if unknown:
            yield warning((*where, "name"), unknown[0], "lint/kbundle-settings")
        elif "value" in item:
            try:
                resolve_settings({}, {}, env={var: str(item["value"])})
            except ConfigError as exc:
                yield error(
                    (*where, "value"),
                    f"the predictor will refuse to start: {exc}",
                    "kbundle/settings",
                )
