"""The base of jaxbp's records (activations, losses, tasks, layers): a short, stable repr,
written once here.

A record holds functions, whose own reprs are addresses (`<function <lambda> at
0x7f...>`). A record prints as its kind and its name, then the fields that differ from
their defaults, a function by its name: `Activation('cube', fn=<lambda>, deriv=<lambda>)`,
`Dense(width=8)`. The built-in record of a name (the one its table holds:
`jaxbp.ACTIVATIONS["tanh"]`) prints as its kind and name alone, `Activation('tanh')`, and
inside another record as its name, `'tanh'`, as the keyword API takes it. A user's record
never passes for a built-in: one named "tanh" whose functions are not the built-in's
prints them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

__all__ = ["Record", "shown"]


class Record:
    """A record's repr (module docstring). A record whose table names it by its `name`
    says so in `_builtin`."""

    __slots__ = ()

    @property
    def _builtin(self) -> bool:
        """Whether this is the built-in record of its name (then it prints by its name)."""
        return False

    def __repr__(self) -> str:
        kind = type(self).__name__
        fields = dataclasses.fields(self) if dataclasses.is_dataclass(self) else ()
        parts = [repr(self.name)] if any(f.name == "name" for f in fields) else []  # type: ignore[attr-defined]
        if not self._builtin:
            for f in fields:
                if f.name == "name" or not f.repr:
                    continue
                text = shown(getattr(self, f.name))
                if f.default is not dataclasses.MISSING and text == shown(f.default):
                    continue
                parts.append(f"{f.name}={text}")
        return f"{kind}({', '.join(parts)})"


def shown(value: Any) -> str:
    """A value as a record's repr shows it: a built-in record by its name, a function by
    its name (`<lambda>`), a list or tuple item by item, anything else by its repr."""
    if isinstance(value, Record):
        return repr(value.name) if value._builtin else repr(value)  # type: ignore[attr-defined]
    if isinstance(value, list):
        return "[" + ", ".join(map(shown, value)) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(map(shown, value)) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, functools.partial):
        return f"partial({shown(value.func)})"
    if callable(value) and not isinstance(value, type):
        name = getattr(value, "__name__", None)
        return name if isinstance(name, str) else f"<{type(value).__name__}>"
    return repr(value)
