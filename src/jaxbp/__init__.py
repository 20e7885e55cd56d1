"""jaxbp: multilayer perceptrons with back-propagation written by hand (eq. 1.4)
and checked against `jax.grad`.

Equation numbers cite chapter 1 of the course this project comes from; see the
README for the notation.
"""

from jaxbp import datasets, runs
from jaxbp._activations import ACTIVATIONS, SOFTMAX, Activation, Softmax
from jaxbp._backprop import Trace, backprop, manual_grad
from jaxbp._check import LOSS_OUTPUTS, parity_grid, random_problem
from jaxbp._checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from jaxbp._config import Config
from jaxbp._custom_vjp import mlp
from jaxbp._diagnostics import backward_flow_stats
from jaxbp._dp import dp_value_and_grad, make_dp_train_epoch, make_dp_train_step
from jaxbp._dropout import Dropout
from jaxbp._fused import FusedSGD, fused_epoch_fn, fused_sgd, fused_step_fn
from jaxbp._init import INITS
from jaxbp._layers import Activate, Context, Dense
from jaxbp._losses import LOSSES, Loss, huber
from jaxbp._mlp import forward, init_layers, init_mlp, init_stats, loss_fn
from jaxbp._norm import BatchNorm, LayerNorm
from jaxbp._parity import LeafParity, ParityReport, assert_parity, check_parity
from jaxbp._per_example import per_example_grad_norms, per_example_grads
from jaxbp._privacy import DPSampling, dp_epoch_sampling, dp_epsilon, dp_noise_multiplier
from jaxbp._second_order import gnvp, hvp
from jaxbp._sharding import data_mesh
from jaxbp._tasks import TASKS, Task
from jaxbp._train import (
    TrainState,
    epoch_batches,
    epoch_means,
    evaluate,
    evaluate_sweep,
    init_train_state,
    make_train_epoch,
    make_train_step,
    make_train_sweep,
)
from jaxbp.runs import Run, RunError, load_run

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "LOSSES",
    "LOSS_OUTPUTS",
    "SOFTMAX",
    "TASKS",
    "Activate",
    "Activation",
    "BatchNorm",
    "CheckpointError",
    "Config",
    "Context",
    "DPSampling",
    "Dense",
    "Dropout",
    "FusedSGD",
    "LayerNorm",
    "LeafParity",
    "Loss",
    "ParityReport",
    "Run",
    "RunError",
    "Softmax",
    "Task",
    "Trace",
    "TrainState",
    "assert_parity",
    "backprop",
    "backward_flow_stats",
    "check_parity",
    "data_mesh",
    "datasets",
    "dp_epoch_sampling",
    "dp_epsilon",
    "dp_noise_multiplier",
    "dp_value_and_grad",
    "epoch_batches",
    "epoch_means",
    "evaluate",
    "evaluate_sweep",
    "forward",
    "fused_epoch_fn",
    "fused_sgd",
    "fused_step_fn",
    "gnvp",
    "huber",
    "hvp",
    "init_layers",
    "init_mlp",
    "init_stats",
    "init_train_state",
    "load_checkpoint",
    "load_run",
    "loss_fn",
    "make_dp_train_epoch",
    "make_dp_train_step",
    "make_train_epoch",
    "make_train_step",
    "make_train_sweep",
    "manual_grad",
    "mlp",
    "parity_grid",
    "per_example_grad_norms",
    "per_example_grads",
    "random_problem",
    "runs",
    "save_checkpoint",
]
