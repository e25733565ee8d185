"""Inference without web code: load a saved model with its fitted preprocessor, check inputs, predict."""

from modelyard.inference.predictor import Prediction, Predictor
from modelyard.modalities import InvalidInputError

__all__ = ["InvalidInputError", "Prediction", "Predictor"]
