"""jaxbp: multilayer perceptrons with back-propagation written by hand (eq. 1.4)
and checked against `jax.grad`.

Equation numbers cite chapter 1 of the course this project comes from; see the
README for the notation.
"""

from jaxbp import datasets
from jaxbp._activations import ACTIVATIONS, Activation
from jaxbp._backprop import Trace, backprop, manual_grad
from jaxbp._losses import LOSSES
from jaxbp._mlp import INITS, forward, init_mlp, loss_fn
from jaxbp._parity import ParityReport, check_parity
from jaxbp._train import evaluate, make_train_epoch, make_train_step

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "LOSSES",
    "Activation",
    "ParityReport",
    "Trace",
    "backprop",
    "check_parity",
    "datasets",
    "evaluate",
    "forward",
    "init_mlp",
    "loss_fn",
    "make_train_epoch",
    "make_train_step",
    "manual_grad",
]
