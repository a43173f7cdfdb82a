"""Helpers shared by the benchmark scripts: the machine they ran on, memory readings, timing,
markdown tables, and the one generated document (``docs/benchmarks.md``) they write into.

Each script owns one section of ``docs/benchmarks.md`` between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` and replaces only that section, so the accuracy and speed scripts can be
re-run independently without erasing each other's numbers.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
IMG_DIR = REPO / "docs" / "img"
OUT_DIR = REPO / "benchmarks" / "out"  # caches and raw results; git-ignored

DOC_HEADER = """# Benchmarks

Every number on this page is written by a script in `benchmarks/` (never by hand); each section
names the command and the machine that produced it. Re-run a script to refresh its section.
See `benchmarks/README.md` for what the modes measure.

"""


# ---------------------------------------------------------------- machine description
def cpu_model() -> str:
    """The CPU's marketing name (the one `sgmn demo` records too)."""
    from sgmn.demo import cpu_name

    return cpu_name()


def machine_info() -> dict:
    import torch

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "memory_gib": round(_total_memory_bytes() / 2**30, 1) if _total_memory_bytes() else None,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "cuda": None,
        "git": git_revision(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["cuda"] = {"device": torch.cuda.get_device_name(0), "memory_gib": round(props.total_memory / 2**30, 1),
                        "cuda_version": torch.version.cuda}
    return info


def git_revision() -> str:
    """The commit the code was at, with "+ uncommitted changes" when the tree was dirty."""
    import subprocess

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "sgmn"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev} + uncommitted changes in sgmn/" if dirty else rev


def _total_memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_markdown(info: dict) -> str:
    gpu = (f"{info['cuda']['device']} ({info['cuda']['memory_gib']} GiB, CUDA {info['cuda']['cuda_version']})"
           if info.get("cuda") else "none")
    rows = [
        ("CPU", f"{info['cpu']} — {info['cores_usable']} usable of {info['cores']} logical cores"),
        ("torch threads", str(info["torch_threads"])),
        ("memory", f"{info['memory_gib']} GiB"),
        ("GPU", gpu),
        ("software", f"Python {info['python']}, torch {info['torch']}, {info['os']}"),
        ("sgmn code", f"git {info.get('git', 'unknown')}"),
        ("load average at start", ", ".join(str(x) for x in info["load_average"] or [])),
    ]
    return markdown_table(["machine", ""], rows)


def command_line() -> str:
    """The command that is running, as one would retype it from the repository root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(REPO)
    except ValueError:
        pass
    return " ".join(["python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


# ---------------------------------------------------------------- memory
def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (Linux >= 4.0: ``5`` into /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak RSS of this process's memory image (VmHWM: unlike ``ru_maxrss`` it is not inherited
    from the parent across fork + exec, and :func:`reset_peak_rss` resets it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------- timing
def time_call(fn: Callable[[], object], repeats: int = 3, warmup: int = 1, sync: Optional[Callable[[], None]] = None,
              min_seconds: float = 0.0) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before reading the clock so queued GPU
    work is counted. With ``min_seconds`` more runs are added until that much time was measured.
    """
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_seconds:
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


# ---------------------------------------------------------------- markdown
def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the section ``name`` replaced by ``body`` (appended when absent)."""
    start, end = markers(name)
    block = f"{start}\n{body.strip()}\n{end}"
    i, j = text.find(start), text.find(end)
    if (i < 0) != (j < 0) or (i >= 0 and j < i):
        raise ValueError(f"docs section {name!r}: markers {start} / {end} are unpaired or out of order")
    if i < 0:
        return text.rstrip("\n") + "\n\n" + block + "\n"
    return text[:i] + block + text[j + len(end):]


def write_section(name: str, body: str, doc: Path = DOC) -> Path:
    """Replace (or add) section ``name`` of ``doc``, keeping every other section as it is."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    text = doc.read_text(encoding="utf-8") if doc.exists() else DOC_HEADER
    doc.write_text(replace_section(text, name, body), encoding="utf-8")
    return doc
