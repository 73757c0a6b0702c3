"""A sandboxed storage-init run: DEST plus the process's own HOME, TMPDIR and cwd, all checked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from storage_servers import tree

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-never-logged",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class Result:
    rc: int
    log: str
    max_rss_mib: float

    @property
    def last_line(self) -> str:
        return self.log.strip().splitlines()[-1]


@dataclass
class Sandbox:
    """A test's whole writable world: DEST plus the process's HOME, TMPDIR and cwd."""

    root: Path

    @property
    def dest(self) -> Path:
        return self.root / "dest" / "models"

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        for name in ("home", "tmp", "cwd"):
            (self.root / name).mkdir(exist_ok=True)
        full_env = {
            **{
                k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KBUNDLE_", "S3_"))
            },
            "HOME": str(self.root / "home"),
            "TMPDIR": str(self.root / "tmp"),
            "KBUNDLE_STORAGE_BACKOFF_S": "0.05",
            **(env or {}),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "kbundle.storage_init", *args],
            cwd=self.root / "cwd",
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        # Read to EOF, then reap with wait4 for this child's own peak RSS (pytest-timeout bounds it).
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        return Result(proc.returncode, out.decode(errors="replace"), usage.ru_maxrss / 1024)

    def outside_dest(self) -> dict[str, str]:
        """What the run left outside DEST (must stay empty)."""
        found = {}
        for name in ("home", "tmp", "cwd"):
            found.update({f"{name}/{k}": v for k, v in tree(self.root / name).items()})
        extra = sorted(set(os.listdir(self.root / "dest")) - {"models"})
        found.update({f"dest/{n}": "?" for n in extra})
        return found


def install_model(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        shutil.copy2(item, dest / item.name)
