"""The only package that talks to MLflow: runs (`tracking`), model versions (`versions`), promotion
(`promotion`), the pyfunc face of a model (`pyfunc`), a version's model card (`card`) and the register stage
(`registration`).

Every function takes the tracking URI explicitly; nothing is set at import. With the embedded default
(`sqlite:///mlflow/mlflow.db`) artifacts go to `mlflow/artifacts/`, the same place `make up`'s server serves
them from, so runs logged with or without the server read the same.
"""
