"""Training utilities: optimiser/schedule, EMA, config errors, metric reports, W&B helpers."""
