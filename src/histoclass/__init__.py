"""histoclass: train, evaluate and explain CNNs that classify histopathology patches as
Benign (0) or Malignant (1)."""

__version__ = "0.1.0"

CLASS_NAMES = ("benign", "malignant")
