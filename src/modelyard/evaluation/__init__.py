"""Held-out evaluation: metrics, plots and a markdown report."""
