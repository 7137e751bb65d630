"""atomgen.eval: diversity and fidelity metrics, offline, exact, in three steps (method.md §9).

1. **Features** (:mod:`.features`, :mod:`.inception`, :mod:`.hub_features`, :mod:`.classifier`,
   :mod:`.lpips`): images in [0, 1] → vectors; FID Inception-v3, DINOv2 and CLIP (through transformers),
   the small digit classifiers, LPIPS AlexNet, any ``nn.Module``; :func:`extract_features` feeds several
   extractors from one decoding pass. Class accuracy (:func:`classify`) comes from a digit classifier or
   a transformers image classifier's logits (:mod:`.hub_classifier`).
2. **Statistics** (:mod:`.statistics`): streamed float64 mean and covariance, ``.npz`` cache.
3. **Scores** (:mod:`.scores`, :mod:`.modes`, :mod:`.attribution`): :func:`fid`, :func:`kid`, :func:`prdc`,
   :func:`vendi`, :func:`lpips_diversity`, :func:`mode_coverage`, :func:`attribution_faithfulness`;
   :func:`per_class_scores` (:mod:`.per_class`) for class-conditional samples.

VAEs (:mod:`.vae`): :func:`vae_scores` (reconstruction error, KL per latent channel, active units),
:func:`prior_samples` and :func:`reconstruct`; :func:`save_image_grid` writes PNG grids.

Text-to-image (:mod:`.prompts`): the CLIP score and diversity within each prompt, from a sample
manifest (:class:`ManifestSource`) or a folder per prompt.

:func:`run_eval` (:mod:`.run`) is the logic of ``atomgen eval``, :mod:`.command` its command line and
:mod:`.report` its reports.

Example:
    >>> import numpy as np
    >>> from atomgen.eval import fid, vendi
    >>> rng = np.random.default_rng(0)
    >>> real = rng.normal(size=(500, 4))
    >>> round(fid(real, real + 1.0), 6)  # equal covariances: the squared mean difference
    4.0
    >>> round(vendi(np.eye(3)), 6), round(vendi(np.ones((5, 3))), 6)  # orthogonal: N; identical: 1
    (3.0, 1.0)
"""

from .attribution import (
    ATTRIBUTION_METHODS,
    AttributionFaithfulness,
    attribution_faithfulness,
    attribution_maps,
    compare_attributions,
    particle_attributions,
    save_attribution_grid,
)
from .classifier import (
    ClassifierLogits,
    DigitClassifier,
    DigitFeatures,
    classify,
    load_classifier_logits,
    load_digit_classifier,
)
from .command import add_eval_arguments, eval_command
from .features import (
    FeatureExtractor,
    ModuleFeatures,
    clean_resize,
    compute_features,
    extract_features,
    load_extractor,
)
from .folders import FolderSource, ManifestSource, read_manifest
from .grids import save_image_grid
from .hub_classifier import HubClassifierLogits, load_hub_classifier
from .hub_features import CLIPFeatures, DINOv2Features, load_clip, load_dinov2
from .inception import InceptionFeatures, load_inception
from .lpips import LPIPSDiversity, LPIPSFeatures, LPIPSGroupSums, lpips_diversity, lpips_pairwise
from .modes import ModeCoverage, mode_coverage
from .per_class import per_class_scores
from .prompts import PromptScores, clip_scores, mean_cosine_distance, prompt_diversity, prompt_scores
from .report import write_reports
from .run import ALL_METRICS, METRICS, run_eval
from .scores import KID, PRDC, fid, frechet_distance, kid, kid_scale, prdc, vendi
from .sources import ImageSource, TensorSource, open_source
from .statistics import FeatureSet, FeatureStatistics, Statistics
from .vae import VAEScores, VAEScoreSums, load_vae_pipeline, prior_samples, reconstruct, vae_scores

__all__ = [
    "ALL_METRICS",
    "ATTRIBUTION_METHODS",
    "KID",
    "METRICS",
    "PRDC",
    "AttributionFaithfulness",
    "CLIPFeatures",
    "ClassifierLogits",
    "DINOv2Features",
    "DigitClassifier",
    "DigitFeatures",
    "FeatureExtractor",
    "FeatureSet",
    "FeatureStatistics",
    "FolderSource",
    "HubClassifierLogits",
    "ImageSource",
    "InceptionFeatures",
    "LPIPSDiversity",
    "LPIPSFeatures",
    "LPIPSGroupSums",
    "ManifestSource",
    "ModeCoverage",
    "ModuleFeatures",
    "PromptScores",
    "Statistics",
    "TensorSource",
    "VAEScoreSums",
    "VAEScores",
    "add_eval_arguments",
    "attribution_faithfulness",
    "attribution_maps",
    "classify",
    "clean_resize",
    "clip_scores",
    "compare_attributions",
    "compute_features",
    "eval_command",
    "extract_features",
    "fid",
    "frechet_distance",
    "kid",
    "kid_scale",
    "load_classifier_logits",
    "load_clip",
    "load_digit_classifier",
    "load_dinov2",
    "load_extractor",
    "load_hub_classifier",
    "load_inception",
    "load_vae_pipeline",
    "lpips_diversity",
    "lpips_pairwise",
    "mean_cosine_distance",
    "mode_coverage",
    "open_source",
    "particle_attributions",
    "per_class_scores",
    "prdc",
    "prior_samples",
    "prompt_diversity",
    "prompt_scores",
    "read_manifest",
    "reconstruct",
    "run_eval",
    "save_attribution_grid",
    "save_image_grid",
    "vae_scores",
    "vendi",
    "write_reports",
]
