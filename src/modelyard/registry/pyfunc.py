"""The MLflow pyfunc face of a modelyard model, so `mlflow.pyfunc.load_model("models:/...@champion")` works.

Input: what the model's modality takes through MLflow (uint8 images shaped like the training data; a
DataFrame with a `text` column, or a list of strings; ...). Output: a DataFrame with label, index, what the
preprocessor notes of each input (text: truncated), and one `score/<class>` column per class.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc


class ClassifierModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from modelyard.inference import Predictor

        self.predictor = Predictor.from_dir(context.artifacts["model_dir"])

    # Unannotated on purpose: MLflow derives a signature from type hints when present, and ours comes
    # from the input example instead.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        import pandas as pd

        inputs = self.predictor.spec.modality.from_pyfunc(model_input)
        return pd.DataFrame([{"label": p.label, "index": p.index, **p.extra,
                              **{f"score/{k}": v for k, v in p.scores.items()}}
                             for p in self.predictor.predict(inputs)])
