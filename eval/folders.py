"""Image files as sources: a folder (recursively), a sample manifest, a folder per prompt.

Images of mixed sizes are brought to the size of the first one with the clean resize (bicubic,
antialiased: :func:`~atomgen.eval.extractor.clean_resize`), and the report says how many were resized;
unreadable files stop the run with their path, or are skipped and listed (``skip_unreadable=True``).

The manifest is what ``atomgen sample`` writes (``<out>/manifest.json``, format ``atomgen-samples/1``):
``images`` lists each image's ``file`` (relative to the manifest's folder), its ``class_label`` (an int
or null) and its ``prompt`` (a string or null).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from atomgen.data import image_files, read_image

from .extractor import clean_resize
from .image_source import ImageSource

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "atomgen-samples/1"
PROMPT_FILE = "prompt.txt"  # in a folder per prompt: the prompt, when the folder name cannot hold it
GREY_MODES = ("L", "1", "I", "I;16", "F")

__all__ = ["MANIFEST", "FolderSource", "ManifestSource", "folder_prompts", "read_manifest"]


class _FileDataset(torch.utils.data.Dataset):
    """Decodes one file to float32 ``(C, H, W)`` in [0, 1] at ``size``; an unreadable file gives its error
    message instead of a tensor when ``skip`` is set."""

    def __init__(self, paths: list[Path], mode: str, size: tuple[int, int], skip: bool):
        self.paths, self.mode, self.size, self.skip = paths, mode, size, skip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | str, int, tuple[int, int]]:
        path = self.paths[index]
        try:
            array = read_image(path, self.mode)
        except (OSError, ValueError) as error:
            if self.skip:
                return str(error), index, (0, 0)
            raise OSError(
                f"cannot read image file {path}: {error}; pass --skip-unreadable (skip_unreadable=True) "
                "to leave such files out and list them in the report"
            ) from error
        tensor = torch.from_numpy(array)
        tensor = (tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)).to(torch.float32) / 255.0
        original = tuple(tensor.shape[1:])
        if original != self.size:
            tensor = clean_resize(tensor[None], self.size)[0].clamp(0.0, 1.0)
        return tensor, index, original


def _collate(items: list) -> list:
    return items


class FolderSource(ImageSource):
    """Image files under a folder (recursively), in sorted path order, or the files listed in ``paths``.

    Grey folders stay one channel; any colour image among the first 64 makes the whole folder RGB.
    Every image is brought to the size of the first readable one (clean resize); :meth:`notes` says how
    many were resized and which files were skipped.

    Args:
        root: the folder.
        limit: use only the first ``limit`` files.
        paths: the files to read (default: every image file below ``root``).
        skip_unreadable: leave out files that cannot be decoded (listed in :attr:`skipped`) instead of
            raising.
    """

    def __init__(
        self,
        root: str | Path,
        limit: int | None = None,
        *,
        paths: list[Path] | None = None,
        skip_unreadable: bool = False,
    ):
        self.root = Path(root)
        paths = image_files(self.root) if paths is None else list(paths)
        self.paths = paths[:limit] if limit is not None else paths
        self.name = str(self.root)
        self.skip_unreadable = skip_unreadable
        self.skipped: list[tuple[Path, str]] = []  # of the last pass: (file, why)
        self.resized: Counter = Counter()  # of the last pass: original (H, W) → files
        self.mode, self.size = self._mode_and_size()

    def _mode_and_size(self) -> tuple[str, tuple[int, int]]:
        """Colour mode and target size from the headers of the first files (no pixel is decoded)."""
        from PIL import Image

        mode, size = "L", None
        for path in self.paths[:64]:
            try:
                with Image.open(path) as image:
                    size = size or (image.height, image.width)
                    if image.mode not in GREY_MODES:
                        mode = "RGB"
            except OSError as error:
                if not self.skip_unreadable:
                    raise OSError(
                        f"cannot read image file {path}: {error}; pass --skip-unreadable "
                        "(skip_unreadable=True) to leave such files out and list them in the report"
                    ) from error
        if size is None:
            raise OSError(
                f"none of the first {min(64, len(self.paths))} image files in {self.root} is readable"
            )
        return mode, size

    def __len__(self) -> int:
        return len(self.paths)

    def image_shape(self) -> tuple[int, int, int]:
        return (3 if self.mode == "RGB" else 1, *self.size)

    def indexed_batches(
        self, batch_size: int, num_workers: int = 0
    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        self.skipped, self.resized = [], Counter()
        loader = torch.utils.data.DataLoader(
            _FileDataset(self.paths, self.mode, self.size, self.skip_unreadable),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_collate,
        )
        for items in loader:
            kept = []
            for tensor, index, original in items:
                if isinstance(tensor, str):
                    self.skipped.append((self.paths[index], tensor))
                    continue
                if original != self.size:
                    self.resized[original] += 1
                kept.append((tensor, index))
            if kept:
                yield torch.stack([t for t, _ in kept]), np.array([i for _, i in kept])

    def batches(self, batch_size: int, num_workers: int = 0) -> Iterator[torch.Tensor]:
        for batch, _ in self.indexed_batches(batch_size, num_workers):
            yield batch

    def notes(self) -> list[str]:
        notes = []
        if self.resized:
            sizes = ", ".join(f"{count} of {h}×{w}" for (h, w), count in sorted(self.resized.items()))
            notes.append(
                f"{sum(self.resized.values())} images of {self.name} differ in size from the first "
                f"({self.size[0]}×{self.size[1]}) and were resized to it with the clean resize (bicubic, "
                f"antialiased; aspect ratios are not kept): {sizes}"
            )
        if self.skipped:
            listed = "; ".join(f"{path} ({why})" for path, why in self.skipped)
            notes.append(f"skipped {len(self.skipped)} unreadable files of {self.name}: {listed}")
        return notes

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"{self.mode} {self.size}".encode())
        for path in self.paths:
            digest.update(str(path.relative_to(self.root)).encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()


def read_manifest(path: str | Path) -> dict:
    """A sample manifest (``manifest.json`` or its folder), checked: format, and an ``images`` list whose
    entries have a ``file``."""
    path = Path(path)
    path = path / MANIFEST if path.is_dir() else path
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the sample manifest {path}: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path} is not a sample manifest: format {found!r}, expected {MANIFEST_FORMAT!r}")
    images = manifest.get("images")
    if (
        not isinstance(images, list)
        or not images
        or not all(isinstance(i, dict) and "file" in i for i in images)
    ):
        raise ValueError(f"{path}: 'images' must be a non-empty list of entries with a 'file'")
    return manifest


class ManifestSource(FolderSource):
    """The images a sample manifest lists, with their prompts and class labels.

    Args:
        path: ``manifest.json`` or the folder holding it.
        skip_unreadable: as for :class:`FolderSource`.
    """

    def __init__(self, path: str | Path, *, skip_unreadable: bool = False):
        path = Path(path)
        self.manifest_path = path / MANIFEST if path.is_dir() else path
        self.manifest = read_manifest(self.manifest_path)
        root = self.manifest_path.parent
        entries = self.manifest["images"]
        paths = [root / entry["file"] for entry in entries]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing and not skip_unreadable:
            raise FileNotFoundError(
                f"{self.manifest_path} lists {len(missing)} files that do not exist, e.g. {missing[0]}"
            )
        super().__init__(root, paths=paths, skip_unreadable=skip_unreadable)
        self.name = str(self.manifest_path)
        prompts = [entry.get("prompt") for entry in entries]
        self.prompts = prompts if any(p is not None for p in prompts) else None
        labels = [entry.get("class_label") for entry in entries]
        if all(isinstance(label, int) for label in labels):
            self.labels = np.asarray(labels, dtype=np.int64)


def folder_prompts(source: FolderSource) -> list[str] | None:
    """The prompt of each file of a folder per prompt: its first-level subfolder's ``prompt.txt``, else
    the subfolder's name; ``None`` when some file lies directly in the root (not a folder per prompt)."""
    prompts, cache = [], {}
    for path in source.paths:
        parts = path.relative_to(source.root).parts
        if len(parts) < 2:
            return None
        if parts[0] not in cache:
            text = source.root / parts[0] / PROMPT_FILE
            cache[parts[0]] = text.read_text().strip() if text.is_file() else parts[0]
        prompts.append(cache[parts[0]])
    return prompts
