"""Lightning callbacks that need the data side of the platform (`ofa.utils.callbacks` holds the generic ones)."""
from ofa.callbacks.data_skips import DataSkipLogger

__all__ = ["DataSkipLogger"]
