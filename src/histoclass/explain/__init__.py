"""Where a model looks: Grad-CAM for one image, heatmaps over a slide."""
