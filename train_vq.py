"""Train the VQ image tokenizer: `python train_vq.py [vq=nano|gumbel_f8] [key=value ...]` (docs/PLATFORM.md).

Like `train.py`: outputs and data go under this checkout (`OFA_ROOT`), whatever the current directory. The
code is `ofa/train_vq.py`, also installed as the `ofa-train-vq` command.
"""
import os
from pathlib import Path

os.environ.setdefault("OFA_ROOT", str(Path(__file__).resolve().parent))

from ofa.train_vq import main  # noqa: E402

if __name__ == "__main__":
    main()
