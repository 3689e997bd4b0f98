"""Input formats of `ofa.datamodules.convert`: OFA's TSV layouts, COCO caption json and JSONL."""
from ofa.datamodules.formats.coco import CocoSource
from ofa.datamodules.formats.common import ConvertError, RowError, Sample
from ofa.datamodules.formats.jsonl import JsonlSource
from ofa.datamodules.formats.tsv import LAYOUTS, TsvLayout, TsvSource

__all__ = ["LAYOUTS", "CocoSource", "ConvertError", "JsonlSource", "RowError", "Sample", "TsvLayout", "TsvSource"]
