"""Train / validate / test OFA: `python train.py [group=option ...] [key=value ...]` (docs/PLATFORM.md).

The documented entry point of a checkout: outputs and data go under this checkout (`OFA_ROOT`), whatever the
current directory. The code is `ofa/train.py`, also installed as the `ofa-train` command.
"""
import os
from pathlib import Path

os.environ.setdefault("OFA_ROOT", str(Path(__file__).resolve().parent))

from ofa.train import main  # noqa: E402

if __name__ == "__main__":
    main()
