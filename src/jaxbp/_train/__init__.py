"""Training: gradient paths as values, one builder each for a step, an epoch and a sweep,
the training state, the optimizer, shuffled epochs, data parallelism, evaluation."""
