"""The optax side of a training step: the optimizer checked once, its state checked
against the parameters, the update applied."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxbp._core.validate import shape_mismatch

Array = jax.Array

__all__ = ["apply_optimizer", "check_opt_state", "check_optimizer", "tree_norm"]


def check_optimizer(optimizer: Any) -> optax.GradientTransformation:
    """An optax transformation (`optax.MultiSteps` unwrapped; a `jaxbp.fused_sgd` as the
    `optax.sgd` it is), or a `TypeError` naming what was passed."""
    if isinstance(optimizer, optax.MultiSteps):
        return optimizer.gradient_transformation()
    if hasattr(optimizer, "transformation"):  # jaxbp.fused_sgd: optax.sgd whose constants show
        return optimizer.transformation()
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "optimizer must be an optax.GradientTransformation such as optax.adam(1e-3) (or "
            f"an optax.MultiSteps); got {type(optimizer).__name__}."
        )
    return optimizer


def apply_optimizer(
    optimizer: optax.GradientTransformation, grads: Any, opt_state: Any, params: Any
) -> tuple[Any, Any]:
    """`optimizer.update` then `optax.apply_updates`; refuses an optimizer whose update needs
    more than `(grads, state, params)` (a line search's `value`, `grad`, `value_fn`)."""
    try:
        updates, opt_state = optimizer.update(grads, opt_state, params)
    except TypeError as err:
        if "required keyword-only argument" not in str(err):
            raise
        raise TypeError(
            "optimizer needs extra arguments in its update (optax.lbfgs and other line "
            "searches want value, grad and value_fn), which a jaxbp step does not pass: use "
            f"a first-order optimizer such as optax.adam, or your own loop ({err})."
        ) from None
    return optax.apply_updates(params, updates), opt_state


def check_opt_state(optimizer: optax.GradientTransformation, opt_state: Any, params: Any) -> None:
    """At trace time: `opt_state` must be what `optimizer.init(params)` builds, shape for
    shape, and injected hyperparameters must be scalars (one per model in a sweep)."""
    mismatch = shape_mismatch(opt_state, jax.eval_shape(optimizer.init, params))
    if mismatch is not None:
        got, want = mismatch
        raise ValueError(
            "opt_state does not fit params (another architecture or optimizer?): it is "
            f"{type(opt_state).__name__} {got!s:.300}, optimizer.init(params) gives {want!s:.300}. "
            "Build it with optimizer.init(params) (jax.vmap(optimizer.init)(params) for a "
            "sweep)."
        )
    injected = [
        node
        for node in jax.tree.leaves(opt_state, is_leaf=lambda n: hasattr(n, "hyperparams"))
        if hasattr(node, "hyperparams")
    ]
    for node in injected:
        for name, value in node.hyperparams.items():
            if jnp.ndim(value) != 0:
                raise ValueError(
                    f"the injected hyperparameter {name!r} has shape {jnp.shape(value)} per "
                    "model; it must be a scalar (in a sweep: shape (N,) across the N models). "
                    "Build the optimizer with a scalar, e.g. optax.inject_hyperparams("
                    "optax.sgd)(learning_rate=0.1), init it with jax.vmap(optimizer.init), "
                    "then set state.hyperparams[name] = values of shape (N,)."
                )


def tree_norm(tree: Any) -> Array:
    """The global L2 norm of a pytree of arrays."""
    return jnp.sqrt(sum(jnp.sum(leaf * leaf) for leaf in jax.tree.leaves(tree)))
