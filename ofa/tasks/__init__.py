"""Tasks: prompts, targets, constraints, decoding and metrics. `TASKS` maps config names to classes."""
