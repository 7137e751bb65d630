"""The text-to-image example of the documentation runs as written: `atomgen sample --prompts` on a tiny saved
Stable Diffusion, then `atomgen eval` with a tiny saved CLIP, through the real command line.

The commands are read from docs/evaluation.md (the block that samples with ``--prompts``), the README
must show the same block, and only the placeholders SD_PIPELINE and CLIP_FOLDER are replaced by the
tiny models' folders: a change to the documented commands is tested as it is written.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from tiny_sd import tiny_stable_diffusion
from tiny_vision import save_tiny_clip

from atomgen.cli import main

ROOT = Path(__file__).parent.parent
PROMPTS = ["a dog", "a red cat"]
PLACEHOLDERS = ("SD_PIPELINE", "CLIP_FOLDER")


def example_block(page: Path) -> str:
    """The ```bash block of ``page`` that samples from prompts and evaluates the samples."""
    for block in re.findall(r"^```bash\n(.*?)^```", page.read_text(), flags=re.S | re.M):
        if "--prompts prompts.txt" in block and "atomgen eval" in block:
            return block
    raise AssertionError(
        f"{page.relative_to(ROOT)} has no text-to-image example (sample --prompts, then eval)"
    )


def commands(block: str, paths: dict[str, str]) -> list[list[str]]:
    """The block's `atomgen …` commands as argument lists, the placeholders replaced by ``paths``."""
    lines = [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    found = [shlex.split(line, comments=True) for line in lines]
    assert all(words[0] == "atomgen" for words in found), found
    return [[paths.get(word, word) for word in words[1:]] for words in found]


def test_the_readme_shows_the_same_commands():
    assert example_block(ROOT / "README.md") == example_block(ROOT / "docs" / "evaluation.md")


def test_text_to_image_example_samples_and_scores_by_prompt(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    tiny_stable_diffusion(models)  # saved to models/sd
    paths = {"SD_PIPELINE": str(models / "sd"), "CLIP_FOLDER": str(save_tiny_clip(models / "clip"))}
    monkeypatch.chdir(tmp_path)  # the commands' relative paths (prompts.txt, samples/, eval/) land here
    Path("prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    block = example_block(ROOT / "docs" / "evaluation.md")
    assert all(name in block for name in PLACEHOLDERS)

    sample_args, eval_args = commands(block, paths)
    assert sample_args[0] == "sample" and eval_args[0] == "eval"
    assert main([*sample_args, "--no-progress", "--device", "cpu"]) == 0
    manifest = json.loads((tmp_path / "samples" / "sd" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["settings"]["methods"] == ["atom:0.1"]
    per_image = [image["prompt"] for image in manifest["images"]]
    assert per_image == [prompt for prompt in PROMPTS for _ in range(4)]

    assert main([*eval_args, "--no-progress", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "eval" / "sd" / "report.json").read_text())
    prompts = report["metrics"]["prompts"]
    assert [row["prompt"] for row in prompts["rows"]] == PROMPTS
    for row in prompts["rows"]:  # each prompt: its CLIP score and its diversity, all defined
        assert row["images"] == 4 and 0.0 <= row["clip_score"] <= 100.0
        assert row["vendi"] >= 1.0 and row["lpips"] > 0.0 and row["cosine_distance"] >= 0.0
    assert prompts["summary"]["clip_score"]["mean"] == pytest.approx(
        sum(row["clip_score"] for row in prompts["rows"]) / 2
    )
    markdown = (tmp_path / "eval" / "sd" / "report.md").read_text()
    assert "## Per prompt" in markdown and "clip_score" in markdown
    assert all(f"| {prompt} | 4 |" in markdown for prompt in PROMPTS)
