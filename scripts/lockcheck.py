"""Compare the distributions installed in this interpreter with a lock (locks/*.txt).

`python scripts/lockcheck.py locks/dev.txt [--prune]` prints one line per difference and exits 1
when any: a locked package missing or at another version, or a package installed that the lock
does not name (pip, setuptools, wheel and kbundle itself are allowed). `--prune` uninstalls those
extras first (what `pip-sync` would do), so an old venv converges on the lock. Stdlib only: the
container tests read an image's distributions with `installed()` and compare them here.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

ALLOWED_EXTRAS = frozenset({"pip", "setuptools", "wheel", "kbundle"})
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normalize(name: str) -> str:
    """PEP 503 name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """name -> version for every `name==version` line of a pip requirements lock."""
    pins = {}
    for line in path.read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[normalize(match.group(1))] = match.group(2)
    return pins


def installed() -> dict[str, str]:
    """name -> version of every distribution this interpreter imports (the first on sys.path wins,
    as for imports: a system copy shadowed by a pip-installed one does not count)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        found.setdefault(normalize(dist.metadata["Name"]), dist.version)
    return found


def differences(lock: dict[str, str], have: dict[str, str]) -> list[str]:
    """One line per package whose installed state differs from the lock."""
    lines = [
        f"{name}: locked {version}, installed {have.get(name, 'nothing')}"
        for name, version in sorted(lock.items())
        if have.get(name) != version
    ]
    extras = sorted(set(have) - set(lock) - ALLOWED_EXTRAS)
    return lines + [f"{name}: installed {have[name]}, not in the lock" for name in extras]


def main(argv: list[str]) -> int:
    lock = read_lock(Path(argv[0]))
    if "--prune" in argv:
        extras = sorted(set(installed()) - set(lock) - ALLOWED_EXTRAS)
        if extras:
            pip = [sys.executable, "-m", "pip", "uninstall", "-q", "-y"]
            subprocess.run(pip + extras, check=True)
    diff = differences(lock, installed())
    for line in diff:
        print(f"lockcheck {argv[0]}: {line}", file=sys.stderr)
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
