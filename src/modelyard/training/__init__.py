"""Training: `loop` holds plain torch steps; `distributed` runs them on N workers with Ray Train."""
