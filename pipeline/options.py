"""Command-line options derived from the config models: type, choices and default come from the
field, so that ``--help`` and the YAML loader can never disagree."""

from __future__ import annotations

import argparse
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _kinds(annotation: Any) -> list[Any]:
    """The plain types and Literal values an annotation allows (Optional and unions opened)."""
    out: list[Any] = []
    stack = [annotation]
    while stack:
        t = stack.pop(0)
        origin = get_origin(t)
        if origin is Literal:
            out += list(get_args(t))
        elif origin in (Union, types.UnionType):
            stack += list(get_args(t))
        elif t is not type(None):
            out.append(t)
    return out


def default_of(model: type[BaseModel], name: str) -> Any:
    info = model.model_fields[name]
    if info.default is PydanticUndefined:
        return info.default_factory() if info.default_factory else None  # type: ignore[call-arg]
    return info.default


def shown(value: Any) -> str:
    """A default as ``--help`` prints it (and the docs test reads it back)."""
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)


def add_field(
    parser: Any,
    model: type[BaseModel],
    name: str,
    help: str,
    *aliases: str,
    flag: str = "",
    **extra: Any,
) -> None:
    """``--NAME`` for the config field ``name``: a flag for a bool, choices for a Literal,
    the field's type otherwise; the help ends with the default the config uses. ``extra``:
    argparse settings of the field's own (sizes such as 512MB arrive as text)."""
    kinds = _kinds(model.model_fields[name].annotation)
    literals = [k for k in kinds if isinstance(k, str)]
    types_ = [k for k in kinds if isinstance(k, type)]
    kwargs: dict[str, Any] = {"dest": name}
    default = default_of(model, name)
    if types_ == [bool]:
        kwargs.update(action="store_true", default=None)  # None: not given, the YAML decides
    elif literals and not types_:
        kwargs["choices"] = literals
    elif literals:  # int | Literal["auto"]: a number or one of the words
        base = types_[0]
        kwargs["type"] = lambda v, base=base: v if v in literals else base(v)
        kwargs["metavar"] = f"{base.__name__.upper()}|{'|'.join(literals)}"
    elif types_ and types_[0] in (int, float):
        kwargs["type"] = types_[0]
    tail = f" (default: {shown(default)})" if default is not None else ""
    flags = [flag or "--" + name.replace("_", "-"), *aliases]
    parser.add_argument(*flags, help=help + tail, **{**kwargs, **extra})


def overrides(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """Every option that names a field of ``model``, as config overrides (None: not given)."""
    return {k: v for k, v in vars(args).items() if k in model.model_fields}
