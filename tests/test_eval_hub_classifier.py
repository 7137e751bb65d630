"""A transformers image classifier as the judge of class accuracy: a tiny ``ViTForImageClassification``
saved with its ``ViTImageProcessor``, its logits checked against the transformers forward on the
processor's output, and :func:`classify` the argmax of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atomgen.eval import (
    ClassifierLogits,
    HubClassifierLogits,
    classify,
    clean_resize,
    load_classifier_logits,
    load_digit_classifier,
    load_hub_classifier,
)
from atomgen.eval.hub_features import IMAGENET_MEAN, IMAGENET_STD

SIDE = 16  # the tiny ViT's input side
LABELS = 10


def save_tiny_vit_classifier(folder, processor: bool = True, **processor_options):
    """A one-layer ViT classifier of 16 px images into ten classes, and (``processor``) its image processor
    with mean and std unlike ImageNet's."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=SIDE,
        patch_size=8, num_labels=LABELS, initializer_range=1.0,  # wide weights: images' classes differ
    )  # fmt: skip
    ViTForImageClassification(config).eval().save_pretrained(folder)
    if processor:
        options = dict(
            size={"height": SIDE, "width": SIDE}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25]
        )
        ViTImageProcessor(**(options | processor_options)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return save_tiny_vit_classifier(tmp_path_factory.mktemp("vit"))


def _model(folder):
    from transformers import ViTForImageClassification

    return ViTForImageClassification.from_pretrained(folder).eval()


def test_the_logits_are_the_transformers_forward_on_the_processors_output(vit):
    from transformers import ViTImageProcessor

    extractor = load_hub_classifier(vit)
    model, processor = _model(vit), ViTImageProcessor.from_pretrained(vit)
    images = torch.rand(5, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # at the model's side: the processor itself (pixels already in [0, 1], so no rescale)
        pixels = processor(list(images), do_rescale=False, return_tensors="pt")["pixel_values"]
        assert torch.allclose(extractor(images), model(pixel_values=pixels).logits, atol=1e-5)
        # grey 24 px images: RGB, the clean resize to 16, the processor's mean and std, by hand
        grey = torch.rand(4, 1, 24, 24, generator=torch.Generator().manual_seed(2))
        mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
        by_hand = (clean_resize(grey.expand(-1, 3, -1, -1), SIDE).clamp(0, 1) - mean) / std
        logits = model(pixel_values=by_hand).logits
        assert torch.allclose(extractor(grey), logits, atol=1e-5)
    assert extractor.dim == LABELS and extractor(grey).shape == (4, LABELS)
    # classify: the argmax of the logits, from any source
    assert np.array_equal(classify(grey, extractor, batch_size=3), logits.argmax(1).numpy())
    assert len(set(logits.argmax(1).tolist())) > 1  # the test can tell a wrong argmax from a right one


def test_the_name_carries_the_weights_hash_and_the_preprocessing_its_source(vit, tmp_path):
    extractor = load_hub_classifier(vit)
    assert extractor.name.startswith("vit image classifier (") and "weights sha256 " in extractor.name
    assert "ViTImageProcessor" in extractor.preprocessing and "(0.4, 0.5, 0.6)" in extractor.preprocessing
    other = _model(vit)
    with torch.no_grad():
        other.classifier.weight.add_(1.0)
    assert HubClassifierLogits(other, None, vit).name != extractor.name  # other weights, other name


def test_without_a_processor_config_the_model_configs_side_and_imagenet_statistics(tmp_path):
    folder = save_tiny_vit_classifier(tmp_path / "bare", processor=False)
    extractor = load_hub_classifier(folder)
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = (clean_resize(images, SIDE).clamp(0, 1) - mean) / std
    assert torch.allclose(extractor.preprocess(images), expected, atol=1e-6)
    assert "no preprocessor_config.json" in extractor.preprocessing


def test_a_shortest_edge_processor_resizes_then_crops_the_centre(vit):
    from transformers import ConvNextImageProcessor

    processor = ConvNextImageProcessor(size={"shortest_edge": SIDE}, crop_pct=0.5, image_mean=[0.5] * 3,
                                       image_std=[0.5] * 3)  # fmt: skip
    extractor = HubClassifierLogits(_model(vit), processor, vit)
    images = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(4))
    resized = clean_resize(images, 32).clamp(0, 1)  # 16 / crop_pct
    expected = (resized[..., 8:24, 8:24] - 0.5) / 0.5
    assert torch.allclose(extractor.preprocess(images), expected, atol=1e-6)


def test_classify_takes_the_digit_classifier_or_its_logits_alike():
    classifier = load_digit_classifier("digits")
    images = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    logits = load_classifier_logits("digits")
    assert isinstance(logits, ClassifierLogits) and logits.dim == 10
    assert np.array_equal(classify(images, classifier), classify(images, logits))
    with torch.no_grad():
        expected = classifier(classifier.prepare(images, 8)).argmax(1).numpy()
    assert np.array_equal(classify(images, classifier), expected)
    with pytest.raises(TypeError, match="takes a DigitClassifier or a classifier's logits"):
        classify(images, torch.nn.Flatten())


def test_load_classifier_logits_opens_a_folder_and_names_the_option_when_weights_are_missing(
    vit, tmp_path, monkeypatch
):
    assert isinstance(load_classifier_logits(str(vit)), HubClassifierLogits)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        FileNotFoundError, match=r"no classifier weights for 'nobody/no-classifier'.*--classifier"
    ):
        load_classifier_logits("nobody/no-classifier")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        load_classifier_logits(str(tmp_path / "empty"))
