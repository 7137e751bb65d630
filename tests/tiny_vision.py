"""Tiny transformers vision models for the eval tests: DINOv2 and CLIP (with a tokenizer), from small
configs, saved with ``save_pretrained`` and loaded back by path (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

CLIP_SIDE = 32  # the tiny CLIP's input side
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def save_tiny_dinov2(folder: Path) -> Path:
    """A 2-layer, 16-wide ``Dinov2Model`` with patch 14 (ViT-L/14's patch), saved to ``folder``."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, patch_size=14,
        image_size=224,
    )  # fmt: skip
    Dinov2Model(config).eval().save_pretrained(folder)
    return folder


def save_tiny_clip(folder: Path) -> Path:
    """A one-layer ``CLIPModel`` (32 px images, 8-d projections) and a character-level CLIP tokenizer."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in LETTERS:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    torch.manual_seed(0)
    text = dict(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    vision = dict(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=CLIP_SIDE,
        patch_size=8,
    )  # fmt: skip
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
