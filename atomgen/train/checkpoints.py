"""Checkpoints that lose nothing: written under a temporary name, renamed into place, the last K kept."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:07d}"


def temporary_dir(final: Path) -> Path:
    """Where a checkpoint is written before the rename; the same name on every process."""
    return final.with_name(f".{final.name}.tmp")


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first (temporary directories are not listed)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found)


def resolve_resume(run_dir: Path, resume: str) -> Path:
    """``"latest"`` → the newest complete checkpoint of ``run_dir``; otherwise a checkpoint path."""
    if resume == "latest":
        found = list_checkpoints(run_dir)
        if not found:
            raise FileNotFoundError(
                f"--resume latest: {run_dir / 'checkpoints'} holds no checkpoint; start without --resume"
            )
        return found[-1][1]
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(
            f"--resume {resume}: not a checkpoint directory (no trainer_state.json in it)"
        )
    return path


def publish(tmp: Path, final: Path) -> None:
    """Rename a finished checkpoint into place (main process only)."""
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (main process only)."""
    for _, path in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
