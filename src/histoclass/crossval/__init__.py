"""Cross-validation by patient/group and the fold ensemble it leaves (`histoclass cv`)."""
