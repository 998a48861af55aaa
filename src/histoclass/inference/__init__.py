"""From a trained run to calibrated probabilities and labels: `Run`, `load_run`."""
