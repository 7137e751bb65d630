"""The demo's report: the sections' parts joined into ``report.json`` and ``report.md``, with the machine.

Each section (:mod:`.ddpm`, :mod:`.attribution`, :mod:`.cfg`, :mod:`.vae`) writes its own entries of
``report.json`` and renders its own part of ``report.md``; this module knows none of them. It joins the
entries (:func:`build`), adds what every report states (the seeds, the settings, the machine, the
versions, the time per section) and writes both files (:func:`write`) with the sections' renderers in
the order given. Nothing here measures anything.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..io import write_json, write_text

__all__ = ["TITLE", "Renderer", "build", "machine", "markdown", "versions", "write"]

TITLE = "atomgen demo: diversity at equal fidelity?"
# A section's part of report.md from the whole report (no lines when its entries are absent).
Renderer = Callable[[dict[str, Any]], list[str]]


def build(
    *, seeds: Sequence[int], settings: dict[str, Any], parts: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The content of ``report.json``: the seeds, the settings, each section's entries, the machine.

    Args:
        seeds: the seeds every section ran with (the CFG and VAE sections: the first).
        settings: what was run (the demo config, the atom model's mode, the site, the dataset, each
            method's λ or γ).
        parts: each section's entries; two sections may not write the same key.
    """
    report: dict[str, Any] = {"title": "atomgen demo", "seeds": list(seeds), "settings": settings}
    for part in parts:
        taken = sorted(set(part) & set(report))
        if taken:
            raise ValueError(f"two sections of the report write the same entries {taken}")
        report.update(part)
    report["machine"] = machine()
    report["versions"] = versions()
    return report


def write(out: Path, report: dict[str, Any], renderers: Sequence[Renderer]) -> None:
    """Write ``report.json`` and ``report.md`` (the sections in the order of ``renderers``) into ``out``."""
    write_json(out / "report.json", report)
    write_text(out / "report.md", markdown(report, renderers))


def markdown(report: dict[str, Any], renderers: Sequence[Renderer]) -> str:
    """``report.md``: the title, each section's part in order, the machine, the versions and the times."""
    lines = [f"# {TITLE}", ""]
    for render in renderers:
        part = render(report)
        if part:
            lines += [*part, ""]
    lines += ["## Machine and versions", "", *_machine(report), *_timings(report), ""]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """The CPU model, its threads as this process sees them, and the GPU if any."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def versions() -> dict[str, str | None]:
    """Python and the versions of the packages the numbers depend on."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("atomgen", "torch", "torchvision", "diffusers", "accelerate", "numpy", "scikit-learn"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _timings(report: dict[str, Any]) -> list[str]:
    """Wall and CPU seconds per section: the CPU time is what a section costs an idle machine."""
    timings = report.get("timings")
    if not timings:
        return []
    parts = ", ".join(
        f"{section} {spent['wall']:.0f} s (CPU {spent['cpu']:.0f} s)" for section, spent in timings.items()
    )
    lines = [f"- wall time by section: {parts}; total {report.get('wall_seconds', 0):.0f} s"]
    load = report.get("load_average")
    if load and None not in load.values():  # a busy machine stretches the wall times: say how busy
        lines.append(
            f"- load average (1 min) at the start and the end: {load['start']:.2f}, {load['end']:.2f} "
            f"on {report['machine']['usable_cpus']} usable CPUs"
        )
    return lines


def _machine(report: dict[str, Any]) -> list[str]:
    m, v = report["machine"], report["versions"]
    threads = (
        f"{m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs, torch threads {m['torch_threads']}"
    )
    if m["omp_num_threads"]:
        threads += f", OMP_NUM_THREADS={m['omp_num_threads']}"
    return [
        f"- CPU: {m['cpu']}; {threads}",
        f"- GPU: {m['gpu'] or 'none'}",
        f"- {m['platform']}",
        "- " + ", ".join(f"{name} {version}" for name, version in v.items() if version),
    ]
