"""jaxbp: multilayer perceptrons with back-propagation written by hand (eq. 1.4)
and checked against `jax.grad`.

Equation numbers cite chapter 1 of the course this project comes from; see the
README for the notation.
"""

from jaxbp import datasets
from jaxbp._activations import ACTIVATIONS, Activation
from jaxbp._backprop import Trace, backprop, manual_grad
from jaxbp._custom_vjp import mlp
from jaxbp._diagnostics import backward_flow_stats
from jaxbp._dp import dp_value_and_grad, make_dp_train_step
from jaxbp._losses import LOSSES
from jaxbp._mlp import INITS, forward, init_mlp, loss_fn
from jaxbp._parity import ParityReport, check_parity
from jaxbp._per_example import per_example_grad_norms, per_example_grads
from jaxbp._second_order import gnvp, hvp
from jaxbp._sharding import data_mesh
from jaxbp._train import evaluate, make_train_epoch, make_train_step, make_train_sweep

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "LOSSES",
    "Activation",
    "ParityReport",
    "Trace",
    "backprop",
    "backward_flow_stats",
    "check_parity",
    "data_mesh",
    "datasets",
    "dp_value_and_grad",
    "evaluate",
    "forward",
    "gnvp",
    "hvp",
    "init_mlp",
    "loss_fn",
    "make_dp_train_step",
    "make_train_epoch",
    "make_train_step",
    "make_train_sweep",
    "manual_grad",
    "mlp",
    "per_example_grad_norms",
    "per_example_grads",
]
