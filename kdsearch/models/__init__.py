"""The in-project model zoo and the tools to read any model's features."""
from __future__ import annotations

from kdsearch.models.base import ImageClassifier
from kdsearch.models.features import FeatureTap, ModelParts, locate_parts
from kdsearch.models.zoo import MODELS, create_model, model_arch

__all__ = ["MODELS", "create_model", "model_arch", "ImageClassifier", "FeatureTap", "locate_parts", "ModelParts"]
