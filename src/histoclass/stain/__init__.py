"""Stain: the one optical-density convention, the H&E stain vectors, and stain normalization."""
