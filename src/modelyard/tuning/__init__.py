"""Hyper-parameter search with Ray Tune: search spaces declared by each family (`space`), one trial per sampled
configuration (`trial`), the search with its MLflow parent and child runs (`search`) and its report (`report`).

Nothing here imports Ray, Optuna or matplotlib at import time."""
