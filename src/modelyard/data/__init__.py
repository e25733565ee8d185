"""Datasets: where they come from (fetch), how they sit on disk (dataset), checks (validate), augmentation."""
