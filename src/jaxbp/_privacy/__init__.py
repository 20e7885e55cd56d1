"""Differential privacy: the DP-SGD gradient path and the accounting of its epsilon."""
