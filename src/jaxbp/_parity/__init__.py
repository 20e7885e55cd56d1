"""Gradient parity: the handwritten gradient against `jax.grad` (and finite differences),
as a report and over a grid of cases."""
