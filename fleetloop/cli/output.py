"""Shared output helpers: a rich console for people, one JSON object for machines."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from rich.console import Console

__all__ = ["console", "emit", "err_console"]

console = Console()
err_console = Console(stderr=True)


def _default(o: Any) -> Any:
    if hasattr(o, "__fspath__"):
        return str(o)
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print ``data`` as one JSON document (``--json``) or through ``render`` for people."""
    if as_json:
        print(json.dumps(data, default=_default, indent=2, sort_keys=True))
    else:
        render(data)
