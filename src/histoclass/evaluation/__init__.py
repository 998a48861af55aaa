"""Numbers only: metrics, bootstrap intervals, calibration and the operating threshold."""
