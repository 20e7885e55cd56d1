"""jaxbp: multilayer perceptrons with back-propagation written by hand (eq. 1.4)
and checked against `jax.grad`.

Equation numbers cite chapter 1 of the course this project comes from; see
docs/model.md for the notation.
"""

from jaxbp import datasets, runs
from jaxbp._core.activations import ACTIVATIONS, SOFTMAX, Activation, Softmax
from jaxbp._core.backprop import Trace, backprop, manual_grad
from jaxbp._core.config import Config
from jaxbp._core.dropout import Dropout
from jaxbp._core.flow import forward, loss_fn
from jaxbp._core.inits import INITS
from jaxbp._core.layers import Activate, Context, Dense, Layer
from jaxbp._core.losses import LOSSES, Loss, huber
from jaxbp._core.mlp import mlp
from jaxbp._core.network import Network, init_layers, init_mlp, init_stats
from jaxbp._core.norm import BatchNorm, LayerNorm
from jaxbp._core.tasks import TASKS, Task
from jaxbp._curvature.diagonals import diag_ggn, diag_hessian, per_example_diag_ggn
from jaxbp._curvature.kfac import (
    EigenFactors,
    KroneckerFactors,
    ekfac,
    ekfac_mvp,
    kfac,
    kfac_mvp,
)
from jaxbp._curvature.kfac_path import KFAC, KFACState
from jaxbp._curvature.products import gnvp, hvp
from jaxbp._files.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from jaxbp._fused.path import Fused, FusedSGD, fused_epoch_fn, fused_sgd, fused_step_fn
from jaxbp._parity.grid import LOSS_OUTPUTS, parity_grid, random_problem
from jaxbp._parity.report import LeafParity, ParityReport, assert_parity, check_parity
from jaxbp._per_example.statistics import batch_dot_grad, grad_variance, sum_grad_squared
from jaxbp._per_example.terms import per_example_grad_norms, per_example_grads
from jaxbp._privacy.accounting import (
    DPSampling,
    dp_epoch_sampling,
    dp_epsilon,
    dp_noise_multiplier,
)
from jaxbp._privacy.dp import DPSGD, dp_value_and_grad, make_dp_train_epoch, make_dp_train_step
from jaxbp._privacy.tracker import DPTracker
from jaxbp._train.builders import epoch_fn, step_fn, sweep_fn
from jaxbp._train.diagnostics import backward_flow_stats
from jaxbp._train.epochs import epoch_batches, epoch_means
from jaxbp._train.evaluate import evaluate, evaluate_sweep
from jaxbp._train.factories import make_train_epoch, make_train_step, make_train_sweep
from jaxbp._train.grid import Grid, Masked, sgdw
from jaxbp._train.paths import Autodiff, Gradient, GradientPath, Manual
from jaxbp._train.sharding import data_mesh
from jaxbp._train.state import TrainState, init_train_state
from jaxbp.runs import Run, RunError, load_run

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "DPSGD",
    "INITS",
    "KFAC",
    "LOSSES",
    "LOSS_OUTPUTS",
    "SOFTMAX",
    "TASKS",
    "Activate",
    "Activation",
    "Autodiff",
    "BatchNorm",
    "CheckpointError",
    "Config",
    "Context",
    "DPSampling",
    "DPTracker",
    "Dense",
    "Dropout",
    "EigenFactors",
    "Fused",
    "FusedSGD",
    "Gradient",
    "GradientPath",
    "Grid",
    "KFACState",
    "KroneckerFactors",
    "Layer",
    "LayerNorm",
    "LeafParity",
    "Loss",
    "Manual",
    "Masked",
    "Network",
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
    "batch_dot_grad",
    "check_parity",
    "data_mesh",
    "datasets",
    "diag_ggn",
    "diag_hessian",
    "dp_epoch_sampling",
    "dp_epsilon",
    "dp_noise_multiplier",
    "dp_value_and_grad",
    "ekfac",
    "ekfac_mvp",
    "epoch_batches",
    "epoch_fn",
    "epoch_means",
    "evaluate",
    "evaluate_sweep",
    "forward",
    "fused_epoch_fn",
    "fused_sgd",
    "fused_step_fn",
    "gnvp",
    "grad_variance",
    "huber",
    "hvp",
    "init_layers",
    "init_mlp",
    "init_stats",
    "init_train_state",
    "kfac",
    "kfac_mvp",
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
    "per_example_diag_ggn",
    "per_example_grad_norms",
    "per_example_grads",
    "random_problem",
    "runs",
    "save_checkpoint",
    "sgdw",
    "step_fn",
    "sum_grad_squared",
    "sweep_fn",
]
