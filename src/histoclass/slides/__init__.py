"""Whole slides: a trained run's model over scanned slides, with a map of where the tumour is.

`reader` opens slides (OpenSlide, or plain images), `tissue` finds tissue on a thumbnail,
`tiling` plans and reads tiles at the model's µm/px, `regions` turns tile probabilities into a
map and polygons, `outputs` writes the files, `pipeline` streams it all (`histoclass slide`).
"""
from .pipeline import analyse_slide, predict_plan, resolve_model_mpp, run_slides
from .reader import Slide, SlideError, open_slide
from .tiling import TilePlan, plan_tiles, read_tiles

__all__ = ["Slide", "SlideError", "TilePlan", "analyse_slide", "open_slide", "plan_tiles", "predict_plan",
           "read_tiles", "resolve_model_mpp", "run_slides"]
