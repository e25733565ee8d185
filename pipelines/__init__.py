"""Prefect flows and their deployments: wiring only."""
