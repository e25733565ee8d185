"""The MLflow pyfunc face of a modelyard model, so `mlflow.pyfunc.load_model("models:/...@champion")` works."""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """Input: uint8 images shaped like the task's training data ((N, H, W) gray, (N, H, W, C) colour). Output: a
    DataFrame with label, index and one score column per class."""

    def load_context(self, context: Any) -> None:
        from modelyard.inference import Predictor

        self.predictor = Predictor.from_dir(context.artifacts["model_dir"])

    # Unannotated on purpose: MLflow derives a signature from type hints when present, and ours comes
    # from the input example instead.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        import numpy as np
        import pandas as pd

        images = np.asarray(model_input, dtype=np.uint8)
        predictions = self.predictor.predict(images)
        return pd.DataFrame(
            [{"label": p.label, "index": p.index, **{f"score/{k}": v for k, v in p.scores.items()}} for p in predictions]
        )


class TextClassifierModel(ImageClassifierModel):
    """Input: texts (a DataFrame with a `text` column, a Series, or a list of strings). Output: a DataFrame with
    label, index, truncated (the text was longer than the model reads) and one score column per class."""

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            if "text" not in model_input.columns:
                raise ValueError(f"expected a 'text' column, got columns {list(model_input.columns)}")
            texts = model_input["text"].tolist()
        elif isinstance(model_input, pd.Series):
            texts = model_input.tolist()
        else:
            texts = [model_input] if isinstance(model_input, str) else list(model_input)
        predictions = self.predictor.predict(texts)
        return pd.DataFrame([{"label": p.label, "index": p.index, "truncated": p.truncated,
                              **{f"score/{k}": v for k, v in p.scores.items()}} for p in predictions])
