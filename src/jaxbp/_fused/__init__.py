"""The fused path: a whole SGD step, or epoch, as one Pallas kernel."""
