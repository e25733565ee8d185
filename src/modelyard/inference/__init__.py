"""Inference without web code: decode and check an upload, preprocess, predict a batch."""

from modelyard.inference.predictor import InvalidInputError, Prediction, Predictor, decode_image

__all__ = ["InvalidInputError", "Prediction", "Predictor", "decode_image"]
