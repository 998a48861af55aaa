"""Finding images and their labels, decoding them once, and splitting them by patient."""
from .discover import Dataset, discover
from .records import ImageRecord, parse_idc_name

__all__ = ["Dataset", "ImageRecord", "discover", "parse_idc_name"]
