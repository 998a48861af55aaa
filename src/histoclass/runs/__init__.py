"""The run folder's files: configuration, split, calibration, history, stored predictions,
model files and the machine's account; written by training, read by everything after it."""
