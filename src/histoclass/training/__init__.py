"""From prepared data to a finished run folder: batches, the fit with its safe per-epoch
saving, and the calibration and threshold fitted on validation."""
