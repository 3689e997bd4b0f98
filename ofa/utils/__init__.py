"""Training utilities: optimiser/schedule, EMA, callbacks, config errors, metric reports, W&B helpers."""
