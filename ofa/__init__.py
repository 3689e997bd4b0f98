"""OFA (One-For-All) as a PyTorch Lightning + Hydra experiment platform."""

__version__ = "0.1.0"
