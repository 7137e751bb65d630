"""Image folders: mixed sizes resized by the clean resize (and noted), unreadable files skipped and listed,
sample manifests and folders per prompt."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from atomgen.eval import (
    FolderSource,
    ManifestSource,
    add_eval_arguments,
    clean_resize,
    eval_command,
    run_eval,
)
from atomgen.eval.folders import folder_prompts, read_manifest


def _pngs(folder, arrays, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(folder / f"{start + i:03d}.png")
    return folder


def _noise(count, side, seed=0):
    return list(np.random.default_rng(seed).integers(0, 256, size=(count, side, side), dtype=np.uint8))


def test_mixed_sizes_are_resized_with_the_clean_resize_and_noted(tmp_path):
    folder = _pngs(tmp_path / "mixed", _noise(3, 8))
    odd = np.random.default_rng(1).integers(0, 256, size=(12, 12), dtype=np.uint8)
    Image.fromarray(odd).save(folder / "003.png")
    source = FolderSource(folder)
    batch = torch.cat(list(source.batches(2)))
    assert batch.shape == (4, 1, 8, 8)
    expected = clean_resize(torch.from_numpy(odd)[None, None].float() / 255, 8).clamp(0, 1)[0]
    torch.testing.assert_close(batch[3], expected)
    (note,) = source.notes()
    assert "1 images" in note and "resized to it with the clean resize" in note and "1 of 12×12" in note


def test_skip_unreadable_lists_what_it_skipped(tmp_path):
    folder = _pngs(tmp_path / "broken", _noise(8, 8))
    (folder / "002.png").write_bytes(b"not a png")
    (folder / "005.png").write_bytes((folder / "005.png").read_bytes()[:40])  # truncated after the header
    with pytest.raises(OSError, match=r"002\.png.*--skip-unreadable"):
        list(FolderSource(folder).batches(4))
    source = FolderSource(folder, skip_unreadable=True)
    batches = list(source.indexed_batches(3))
    assert np.concatenate([i for _, i in batches]).tolist() == [0, 1, 3, 4, 6, 7]
    assert [p.name for p, _ in source.skipped] == ["002.png", "005.png"]
    assert "skipped 2 unreadable files" in source.notes()[0] and "005.png" in source.notes()[0]


def test_eval_command_skip_unreadable_reports_the_files(tmp_path):
    real = _pngs(tmp_path / "real", _noise(12, 8, seed=2))
    fake = _pngs(tmp_path / "fake", _noise(12, 8, seed=3))
    (fake / "004.png").write_bytes(b"")
    parser = add_eval_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--real", str(real), "--fake", str(fake), "--metrics", "fid", "vendi", "--extractor", "pixels",
         "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress", "--skip-unreadable"]
    )  # fmt: skip
    report = eval_command(args)
    assert report["fake"]["images"] == 11
    assert any("004.png" in note for note in report["notes"])
    assert "004.png" in (tmp_path / "out" / "report.md").read_text()


def test_features_of_skipped_images_are_cached_with_their_indices(tmp_path):
    folder = _pngs(tmp_path / "imgs", _noise(6, 8))
    (folder / "001.png").write_bytes(b"broken")
    options = dict(metrics=["vendi"], extractor="pixels", device="cpu", progress=False, skip_unreadable=True)
    first = run_eval(folder, folder, cache_dir=tmp_path / "cache", **options)
    again = run_eval(folder, folder, cache_dir=tmp_path / "cache", **options)
    assert first["fake"]["images"] == again["fake"]["images"] == 5
    assert first["metrics"]["vendi"] == again["metrics"]["vendi"]


def _manifest(folder, prompts, labels=None):
    folder.mkdir(parents=True, exist_ok=True)
    _pngs(folder / "images", _noise(len(prompts), 8))
    images = [
        {"file": f"images/{i:03d}.png", "index": i, "batch": 0, "prompt": p,
         "class_label": None if labels is None else labels[i]}
        for i, p in enumerate(prompts)
    ]  # fmt: skip
    manifest = {
        "format": "atomgen-samples/1",
        "pipeline": {},
        "settings": {},
        "versions": {},
        "images": images,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_manifest_source_reads_prompts_and_labels(tmp_path):
    folder = _manifest(tmp_path / "out", ["a dog", "a dog", "a cat"], labels=[0, 0, 1])
    source = ManifestSource(folder)
    assert len(source) == 3 and source.prompts == ["a dog", "a dog", "a cat"]
    assert source.labels.tolist() == [0, 0, 1]
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a sample manifest"):
        read_manifest(tmp_path / "bad.json")


def test_folder_per_prompt(tmp_path):
    _pngs(tmp_path / "p" / "a_dog", _noise(2, 8))
    _pngs(tmp_path / "p" / "cat", _noise(2, 8), start=2)
    (tmp_path / "p" / "cat" / "prompt.txt").write_text("a photo of a cat\n")
    expected = ["a_dog", "a_dog", "a photo of a cat", "a photo of a cat"]
    assert folder_prompts(FolderSource(tmp_path / "p")) == expected
    _pngs(tmp_path / "p", _noise(1, 8))
    assert folder_prompts(FolderSource(tmp_path / "p")) is None  # a file at the top: not a folder per prompt
