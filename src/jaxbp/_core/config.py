"""The resolved configuration: the four keywords of every call, settled once.

Every public function takes either `config=` (a `jaxbp.Config`, or the `jaxbp.Network`
built from one) or the keywords `activation`, `loss`, `output_activation`, `reduction`
(and `norm`, `dropout`, `layers`), which it turns into a `Config` itself
(`jaxbp._core.network.as_config`). A `Config` is frozen, hashable and a pytree without leaves, so a
jitted function takes it as an ordinary argument:

```python
cfg = jaxbp.Config(activation="tanh", loss="cross_entropy")
grad = jax.jit(jaxbp.manual_grad)(params, x, y, cfg)  # no static_argnames
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypedDict

import jax

from jaxbp._core.activations import Activation, Softmax, get_activation
from jaxbp._core.dropout import Dropout
from jaxbp._core.layers import Activate, Dense, Layer, as_layer
from jaxbp._core.losses import REDUCTIONS, Loss, OutputActivation, get_loss, get_output_activation
from jaxbp._core.norm import BatchNorm, LayerNorm
from jaxbp._core.records import shown
from jaxbp._core.validate import is_real

__all__ = ["KEYWORDS", "Config", "Keywords"]


class Keywords(TypedDict, total=False):
    """The keywords every function on a batch accepts: those of `jaxbp.Config` in place
    of `config`, and `key`, the call's PRNG key (a network with dropout draws its masks
    from it in training; the same key, the same masks)."""

    activation: str | Activation
    loss: str | Loss | None
    output_activation: str | Activation | Softmax | None
    reduction: str
    layers: Sequence[Any] | None
    norm: str | None
    dropout: float
    key: jax.Array | None


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Config:
    """One network's configuration, resolved: records, not names.

    **Arguments** (names or records; each resolved and checked here, once):

    - `activation`: the hidden layers' activation (`jaxbp.ACTIVATIONS` name or a
      `jaxbp.Activation`).
    - `loss`: a `jaxbp.LOSSES` name or a `jaxbp.Loss`; `None` for `forward` and `mlp`.
    - `output_activation`: `None` for the loss's canonical link (identity without a
      loss); any activation, or "softmax", where the loss accepts it.
    - `reduction`: "mean" over samples or "sum" (the chapter's `L = sum_n l^n`).
    - `norm`: `None`, "layer" or "batch": a `jaxbp.LayerNorm` or `jaxbp.BatchNorm` after
      each hidden dense layer, before its activation (`jaxbp.init_mlp(..., norm=...)`
      makes its parameters).
    - `dropout`: a rate in [0, 1): a `jaxbp.Dropout` after each hidden activation.
    - `layers`: `None` for the MLP of eq. 1.1 built from the above (dense layers with
      `activation` between them, as many as `params` has), or a sequence of layer records
      from the input to the logits `z_L` (e.g. `[Dense(), Activate("tanh"), Dense()]`,
      or a user's own); `params` then holds one entry per layer with parameters.

    After construction `output_activation` holds the record in use and `loss` the
    `jaxbp.Loss` (or `None`).
    """

    activation: Any = None
    loss: Any = None
    output_activation: Any = None
    reduction: str = "mean"
    layers: Any = None
    norm: str | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        if self.layers is None or self.activation is not None:
            set_("activation", get_activation(self.activation))
        loss = None if self.loss is None else get_loss(self.loss)
        set_("loss", loss)
        if self.output_activation is None:
            output = loss.link if loss is not None else get_activation("identity")
        else:
            output = get_output_activation(self.output_activation)
            if loss is not None and not loss.accepts(output):
                raise ValueError(
                    f"loss={loss.name!r} takes only its canonical output activation "
                    f"{loss.link.name!r} (its value and delta are computed from the logits); "
                    f"got output_activation={output.name!r}. Pass output_activation=None, or "
                    "use loss='mse' for other outputs."
                )
        set_("output_activation", output)
        if self.reduction not in REDUCTIONS:
            raise ValueError(
                f"reduction must be one of {list(REDUCTIONS)}; got {self.reduction!r}."
            )
        set_("norm", check_norm(self.norm))
        set_("dropout", check_dropout(self.dropout))
        if self.layers is not None:
            if self.norm is not None or self.dropout:
                raise ValueError(
                    "norm and dropout build the layers of the plain MLP; with layers= put "
                    "jaxbp.LayerNorm, jaxbp.BatchNorm or jaxbp.Dropout records in the list."
                )
            set_("layers", _check_layers(self.layers))

    def __repr__(self) -> str:
        """`Config(activation='tanh', loss='cross_entropy', norm=None, dropout=0.0)`: a
        built-in record by its name (as the keywords take it), a user's by its own repr;
        the output activation, reduction and layers only where they are not the defaults."""
        canonical = self.loss.link if self.loss is not None else get_activation("identity")
        fields = (
            ("activation", self.activation, self.activation is not None),
            ("loss", self.loss, True),
            ("output_activation", self.output_activation, self.output_activation != canonical),
            ("reduction", self.reduction, self.reduction != "mean"),
            ("layers", self.layers, self.layers is not None),
            ("norm", self.norm, self.layers is None),
            ("dropout", self.dropout, self.layers is None),
        )
        return f"Config({', '.join(f'{k}={shown(v)}' for k, v, show in fields if show)})"

    @property
    def output(self) -> OutputActivation:
        return self.output_activation

    def body(self, n_params: int) -> tuple[Any, ...]:
        """The layer records from the input to the logits, for `n_params` parameter entries."""
        if self.layers is not None:
            return self.layers
        block: tuple[Any, ...] = (Dense(),)
        block += (NORMS[self.norm],) if self.norm else ()
        block += (Activate(self.activation),)
        block += (Dropout(self.dropout),) if self.dropout else ()
        n_dense = (n_params + 1) // 2 if self.norm else n_params
        return block * max(n_dense - 1, 0) + (Dense(),)

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (and resolved again)."""
        return dataclasses.replace(self, **changes)


NORMS: dict[str | None, Any] = {None: None, "layer": LayerNorm(), "batch": BatchNorm()}
"""The normalisations `norm=` names."""


def check_norm(norm: Any) -> str | None:
    norm = None if norm == "none" else norm
    if not (norm is None or isinstance(norm, str)) or norm not in NORMS:
        raise ValueError(
            f"norm must be None, 'layer' or 'batch' (a normalisation after each hidden dense "
            f"layer); got {norm!r}."
        )
    return norm


def check_dropout(rate: Any) -> float:
    if not is_real(rate) or not 0 <= rate < 1:
        raise ValueError(f"dropout must be a rate in [0, 1) (0: none), e.g. 0.1; got {rate!r}.")
    return float(rate)


def _check_layers(layers: Any) -> tuple[Layer, ...]:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or not layers:
        raise TypeError(
            "layers must be a non-empty sequence of layer records such as "
            f"[jaxbp.Dense(), jaxbp.Activate('tanh'), jaxbp.Dense()]; got {layers!r}."
        )
    return tuple(as_layer(layer, i) for i, layer in enumerate(layers))


KEYWORDS = tuple(k for k in Keywords.__annotations__ if k != "key")
"""The configuration keywords of `jaxbp.Config`, as every function on a batch takes them."""
