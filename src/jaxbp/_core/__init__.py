"""The core: the records (activations, losses, tasks, layers), the configuration and the
network, the forward flow (eq. 1.1) and back-propagation (eqs. 1.3-1.4)."""
