"""scripts/_bootstrap.sh says what it is doing while it makes .venv (one line per slow step, on
stderr), and nothing once .venv is ready.

The interpreter is a stand-in (``JIDOKA_PYTHON``): a shell script that "creates" a venv by
copying itself and answers every later call (pip, ``import jidoka``) with success, so the test
runs the real script in seconds, without the network.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0
STAND_IN = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0
fi
exit 0
"""


def _project(tmp_path: Path) -> tuple[Path, Path]:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "_bootstrap.sh", project / "scripts" / "_bootstrap.sh")
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n", encoding="utf-8")
    python = tmp_path / "python-stand-in"
    python.write_text(STAND_IN, encoding="utf-8")
    python.chmod(0o755)
    return project, python


def _bootstrap(project: Path, python: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"source {project / 'scripts' / '_bootstrap.sh'} && echo sourced"],
        env={"PATH": "/usr/bin:/bin", "JIDOKA_PYTHON": str(python)},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def test_the_first_run_says_what_it_is_doing_then_stays_quiet(tmp_path: Path) -> None:
    project, python = _project(tmp_path)
    first = _bootstrap(project, python)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "sourced\n"  # stdout stays the command's
    assert first.stderr.splitlines() == [
        "jidoka: creating .venv and installing dependencies (first run, ~1 min)…",
        "jidoka: .venv is ready",
    ]
    again = _bootstrap(project, python)
    assert (again.returncode, again.stdout, again.stderr) == (0, "sourced\n", "")

    (project / "pyproject.toml").write_text("[project]\nname = 'y'\n", encoding="utf-8")
    changed = _bootstrap(project, python)
    assert changed.returncode == 0, changed.stderr
    assert changed.stderr.splitlines()[0].startswith("jidoka: installing dependencies")
