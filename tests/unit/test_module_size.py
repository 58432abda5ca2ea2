"""No module in ``src/jidoka`` is over 500 lines: past that a module holds more than one idea."""

from __future__ import annotations

from pathlib import Path

import jidoka

MAX_LINES = 500
SRC = Path(jidoka.__file__).parent


def _lines() -> dict[str, int]:
    return {
        path.relative_to(SRC).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted(SRC.rglob("*.py"))
    }


def test_no_module_over_the_bound() -> None:
    lines = _lines()
    assert len(lines) > 50  # the walk found the package
    too_long = {name: n for name, n in lines.items() if n > MAX_LINES}
    assert not too_long, f"split these modules (one idea each, at most {MAX_LINES} lines)"
