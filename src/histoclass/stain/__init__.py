"""Stain: the one optical-density convention, the H&E stain vectors, and stain normalization.

`maths` (optical density), `macenko` and `reinhard` (fitting and their transforms), `transform`
(what a fitted transform is), `context` (one transform per patient or slide; the run's reference).
"""
