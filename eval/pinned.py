"""Weight files pinned by sha256: the one place that finds them in installed packages and checks them.

The FID Inception, the LPIPS AlexNet trunk and linear layers, and the committed digit classifiers are all
read through :func:`read_pinned`, so a changed or truncated file is refused the same way everywhere.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

__all__ = ["package_file", "read_pinned"]


def package_file(package: str, relative: str) -> Path | None:
    """``relative`` inside the installed ``package`` (found without importing it), or ``None``."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


def read_pinned(path: str | Path, sha256: str, *, fix: str = "reinstall the package that ships it") -> bytes:
    """The bytes of ``path``, after checking their sha256.

    Args:
        path: the file.
        sha256: the expected hex digest, or its published prefix (torch hub file names carry the first
            eight hex digits).
        fix: what the user should do when the digest differs (ends the error message).

    Raises:
        ValueError: the digest differs.
    """
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not digest.startswith(sha256):
        expected = sha256 if len(sha256) == 64 else f"one starting {sha256}"
        raise ValueError(f"{path} has sha256 {digest}, expected {expected}; {fix}")
    return data
