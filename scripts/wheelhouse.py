"""Fill a build context's wheelhouse from a shared wheel cache, by the locks' hashes.

`python scripts/wheelhouse.py CACHE DEST LOCK...`: every wheel in CACHE whose SHA-256 one of the
locks names is hard-linked (else copied) into DEST. Exit 1, listing them, when some pins have no
wheel in CACHE yet: scripts/images.sh then runs `pip download --require-hashes` into CACHE and
calls this again. Hashes are remembered in CACHE/.sha256 (name, size -> digest) so a warm cache
costs a stat per wheel, not a read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+)")


def locked_hashes(lock: Path) -> dict[str, set[str]]:
    """'name==version' -> the sha256 digests the lock accepts for it."""
    pins: dict[str, set[str]] = {}
    current = None
    for line in lock.read_text().splitlines():
        match = _ENTRY.match(line)
        if match:
            current = f"{match.group(1)}=={match.group(2)}"
            pins[current] = set()
        for digest in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            if current:
                pins[current].add(digest)
    return pins


def digests(cache: Path) -> dict[str, Path]:
    """sha256 -> wheel in CACHE, through the remembered index."""
    index_path = cache / ".sha256"
    known = json.loads(index_path.read_text()) if index_path.is_file() else {}
    out, fresh = {}, {}
    for wheel in sorted(cache.glob("*.whl")):
        key = f"{wheel.name}:{wheel.stat().st_size}"
        digest = known.get(key) or hashlib.sha256(wheel.read_bytes()).hexdigest()
        fresh[key] = digest
        out[digest] = wheel
    index_path.write_text(json.dumps(fresh))
    return out


def link(src: Path, dest_dir: Path) -> None:
    target = dest_dir / src.name
    if target.exists():
        return
    try:
        os.link(src, target)
    except OSError:
        shutil.copy2(src, target)


def main(argv: list[str]) -> int:
    cache, dest, locks = Path(argv[0]), Path(argv[1]), [Path(a) for a in argv[2:]]
    cache.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    have = digests(cache)
    missing = []
    for lock in locks:
        for pin, accepted in locked_hashes(lock).items():
            found = next((have[d] for d in accepted if d in have), None)
            if found is None:
                missing.append(pin)
            else:
                link(found, dest)
    for pin in missing:
        print(f"wheelhouse: not cached yet: {pin}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
