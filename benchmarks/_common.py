"""Shared pieces of the benchmark suite: results, statistics, timing, machine facts, tables.

A :class:`Result` is one row of the results table: a median over repeated samples, the spread of
those samples, optionally a baseline measured in the same run (and the ratio to it), and
optionally the target the issue set. Nothing here asserts on speed: targets are reported, the
smoke test only checks that numbers are sane.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "ROOT",
    "Baseline",
    "Result",
    "Target",
    "clock",
    "format_table",
    "format_value",
    "git_commit",
    "machine_info",
    "make_runtime",
    "percentile",
    "quiesce",
    "run_async",
    "run_child",
    "spread",
]

#: The repository root (the directory holding ``benchmarks/`` and ``src/``).
ROOT = Path(__file__).resolve().parents[1]

#: The timer every benchmark uses.
clock = time.perf_counter

_T = TypeVar("_T")


@dataclass
class Target:
    """What the issue asks for: ``op`` is ``">="`` or ``"<="``, ``value`` in the result's unit."""

    op: str
    value: float
    text: str

    def met(self, value: float) -> bool:
        return value >= self.value if self.op == ">=" else value <= self.value


@dataclass
class Baseline:
    """A reference measured in the same process and run, in the same unit as the result."""

    name: str
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


@dataclass
class Result:
    """One benchmark row. ``samples`` are the per-repeat values; ``value`` is their median."""

    key: str
    title: str
    unit: str
    samples: list[float]
    higher_is_better: bool = True
    baseline: Baseline | None = None
    target: Target | None = None
    #: Quoted figures for scale (not measured here), e.g. peer systems.
    quoted: str = ""
    notes: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float:
        return statistics.median(self.samples)

    @property
    def ratio(self) -> float | None:
        """``value / baseline`` (how many baselines one of ours is)."""
        if self.baseline is None or self.baseline.median == 0:
            return None
        return self.value / self.baseline.median

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.value)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["value"] = self.value
        out["spread"] = spread(self.samples)
        out["ratio"] = self.ratio
        out["met"] = self.met
        if self.baseline is not None:
            out["baseline"]["median"] = self.baseline.median
            out["baseline"]["spread"] = spread(self.baseline.samples)
        return out


def spread(samples: Sequence[float]) -> dict[str, float]:
    """Min, max, and the half-range as a percentage of the median."""
    lo, hi, mid = min(samples), max(samples), statistics.median(samples)
    return {
        "min": lo,
        "max": hi,
        "pct": 100.0 * (hi - lo) / 2 / mid if mid else math.nan,
        "n": len(samples),
    }


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def quiesce() -> None:
    """Collect garbage before a timed section so one sample does not pay for the previous one."""
    gc.collect()


def make_runtime(**overrides: Any) -> Any:
    """A runtime on the **memory store** with default settings except ``overrides``.

    The settings are passed explicitly so ``JIDOKA_*`` environment variables (and the default
    store, which is durable) cannot change what is measured. ``clock=`` is passed through.
    """
    import jidoka

    clock = overrides.pop("clock", None)
    settings = overrides.pop("settings", None) or jidoka.Settings()
    return jidoka.Runtime(settings=settings, store="memory", clock=clock, **overrides)


def run_async(main: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a benchmark's coroutine on a fresh event loop, never in asyncio debug mode (which
    ``PYTHONASYNCIODEBUG`` would otherwise switch on and which slows everything several-fold)."""
    return asyncio.run(main(), debug=False)


# --- formatting -----------------------------------------------------------------------------------

_SCALES = (("G", 1e9), ("M", 1e6), ("k", 1e3))


def format_value(value: float | None, unit: str) -> str:
    """A short human form: ``98.1k msg/s``, ``1,412 B``, ``12.3 µs``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit == "s":
        for name, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
            if abs(value) >= scale or name == "ns":
                return f"{value / scale:.3g} {name}"
    if unit == "B":
        if abs(value) >= 1024 * 1024:
            return f"{value / 1024 / 1024:.3g} MiB"
        return f"{value:,.0f} B"
    if unit == "x":
        return f"{value:.3g}x"
    for name, scale in _SCALES:
        if abs(value) >= scale:
            return f"{value / scale:.3g}{name} {unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def _spread_text(samples: Sequence[float], unit: str) -> str:
    """``109k to 161k msg/s (n=5)``: the unit once when both ends share it."""
    s = spread(samples)
    lo, hi = format_value(s["min"], unit), format_value(s["max"], unit)
    lo_number, _, lo_unit = lo.partition(" ")
    if lo_unit and hi.endswith(" " + lo_unit):
        lo = lo_number
    return f"{lo} to {hi} (n={s['n']})"


def _ratio_text(result: Result) -> str:
    ratio = result.ratio
    if ratio is None:
        return "—"
    return f"{ratio:.3g}x"


def format_table(results: Sequence[Result]) -> str:
    """The results as a markdown table."""
    lines = [
        "| Benchmark | Median | Spread (min-max, n) | Baseline (same run) | Ratio | Target | Met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        spread_text = _spread_text(r.samples, r.unit)
        if r.baseline is not None:
            base = f"{r.baseline.name}: {format_value(r.baseline.median, r.unit)}"
        else:
            base = "—"
        target = r.target.text if r.target is not None else "—"
        met = {True: "yes", False: "**no**", None: "—"}[r.met]
        lines.append(
            f"| {r.title} | {format_value(r.value, r.unit)} | {spread_text} | {base} | "
            f"{_ratio_text(r)} | {target} | {met} |"
        )
    return "\n".join(lines)


# --- machine facts --------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(cwd: Path = ROOT) -> str | None:
    """The short commit checked out at ``cwd`` (``None`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _loop_name() -> str:
    loop = asyncio.new_event_loop()
    try:
        return type(loop).__name__
    finally:
        loop.close()


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import msgspec

    import jidoka

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_count": os.cpu_count(),
        "jidoka": jidoka.__version__,
        "msgspec": msgspec.__version__,
        "git_commit": git_commit(),
        "event_loop": _loop_name(),
        "asyncio_debug_env": bool(os.environ.get("PYTHONASYNCIODEBUG")),
    }
    try:
        import psutil

        info["memory_total_bytes"] = psutil.virtual_memory().total
    except ImportError:  # pragma: no cover - psutil is a dev dependency
        info["memory_total_bytes"] = None
    return info


def run_child(
    module: str, args: Sequence[str], what: str, *, src: Path | None = None
) -> dict[str, Any]:
    """Run ``python -m <module> <args>`` in a fresh process and return the JSON object it prints
    last. The child gets no ``JIDOKA_*`` variables and no asyncio debug or tracemalloc flags.
    With ``src`` (the ``src`` directory of some checkout) the child imports ``jidoka`` from
    there: it comes first on the path, so one run can measure two source trees."""
    command = [sys.executable, "-m", module, *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIDOKA_")}
    first = [str(src)] if src is not None else []
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*first, str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONTRACEMALLOC", None)
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


class ChildServer:
    """A server in a child process, from start to SIGTERM: it is ready once it prints one
    JSON line (its address); :attr:`ready` holds that line, decoded. Its stderr is kept for
    the error if it does not start, and a child that ignores SIGTERM for 20 s is killed."""

    def __init__(self, command: list[str], what: str, env: dict[str, str] | None = None) -> None:
        self.command = command
        self.what = what
        self.env = env
        self.ready: dict[str, Any] = {}
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__)
        self._proc: subprocess.Popen[bytes] | None = None

    def error_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-4000:]

    def __enter__(self) -> ChildServer:
        self._proc = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=self._stderr
        )
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], 60)
        line = self._proc.stdout.readline() if ready else b""
        if not line:
            error = self.error_text()
            self.__exit__(None, None, None)
            raise RuntimeError(f"{self.what} did not start:\n{error}")
        self.ready = json.loads(line)
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self._stderr.close()
        self._proc = None
