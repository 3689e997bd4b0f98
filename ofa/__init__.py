"""OFA (One-For-All) as a PyTorch Lightning + Hydra experiment platform."""

__version__ = "0.1.0"


def __getattr__(name: str):  # `ofa.from_pretrained` / `ofa.OFA` without importing torch on `import ofa`
    if name in ("from_pretrained", "OFA"):
        import ofa.api

        return getattr(ofa.api, name)
    raise AttributeError(f"module 'ofa' has no attribute {name!r}")
