"""Synthetic IDC-style slides and patches: the built-in demo data and an IDC-scale benchmark.

`tissue` paints H&E-like slides with tumour regions; `dataset` cuts them into 50x50 patches and
writes them in the exact Kaggle layout and names.
"""
from .dataset import (SynthSummary, generate_idc_dataset, patch_file_name, patch_grid, patient_ids,
                      patient_tumour_fraction, render_patient_slide, slide_size)
from .tissue import render_slide

__all__ = ["SynthSummary", "generate_idc_dataset", "patch_file_name", "patch_grid", "patient_ids",
           "patient_tumour_fraction", "render_patient_slide", "render_slide", "slide_size"]
