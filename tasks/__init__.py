"""Prefect tasks: a few lines each over one modelyard stage, adding retries and artifacts."""
