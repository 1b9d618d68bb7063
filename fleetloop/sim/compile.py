"""``torch.compile`` for the compiled tick (ADR 0101): the graph wrapper, inductor's on-disk cache, and two helpers
whose behaviour differs between eager and compiled code (``const_table``, ``materialize``).

Importing this module writes nothing into the environment: inductor's cache directory is set by
``use_compile_cache``, which ``compile_graph`` calls before it compiles for the first time, so a process that never
compiles leaves ``TORCHINDUCTOR_CACHE_DIR`` alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "COMPILE_CACHE_ENV",
    "INDUCTOR_CACHE_ENV",
    "compile_cache_dir",
    "compile_graph",
    "const_table",
    "materialize",
    "use_compile_cache",
]

COMPILE_CACHE_ENV = "FLEETLOOP_COMPILE_CACHE_DIR"
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # read by inductor (and its compile workers) on every cache access
RECOMPILE_LIMIT = 64  # graphs per function before dynamo gives up (weather presets x batch sizes of one process)
_COMPILED: dict[tuple[Callable[..., Any], bool, bool], Callable[..., Any]] = {}
_CACHE_SET: list[Path] = []  # the directory use_compile_cache settled on (once per process)


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled graphs for the compiled tick (ADR 0101): ``$FLEETLOOP_COMPILE_CACHE_DIR``, else
    ``~/.cache/fleetloop/inductor``."""
    env = os.environ.get(COMPILE_CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "fleetloop" / "inductor"


def use_compile_cache() -> Path:
    """Point inductor's on-disk caches at ``compile_cache_dir()``, unless the user chose ``TORCHINDUCTOR_CACHE_DIR``;
    returns the directory inductor uses. Idempotent; ``compile_graph`` calls it before its first compile.

    Importing ``torch._dynamo`` writes inductor's default (a per-user temporary directory) into the environment, so
    a value equal to that default is torch's, not the user's choice.
    """
    if _CACHE_SET:
        return _CACHE_SET[0]
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get(INDUCTOR_CACHE_ENV)
    if current is None or current == default_cache_dir():
        os.environ[INDUCTOR_CACHE_ENV] = current = str(compile_cache_dir())
    _CACHE_SET.append(Path(current))
    return _CACHE_SET[0]


def compile_graph(fn: Callable[..., Any], *, fullgraph: bool = True, dynamic: bool = False) -> Callable[..., Any]:
    """``torch.compile(fn)`` for the compiled tick (ADR 0101): inductor, one wrapper per function.

    Static shapes unless ``dynamic`` (one graph for every size: the policy, whose batch and radar width vary with the
    vehicles on a model version). The first call per shape compiles (tens of seconds on a small CPU); inductor's on-disk
    caches (``use_compile_cache``) make the next process fast.
    """
    key = (fn, fullgraph, dynamic)
    hit = _COMPILED.get(key)
    if hit is None:
        use_compile_cache()
        import torch._dynamo

        # Each weather preset (its patch table is a constant of the graphs) and batch size is a graph of its own:
        # leave room for a process that runs several (tests, benchmarks) before dynamo gives up.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        # dynamic_threads: kernels use torch's thread count at run time, not the one at compile time (a cached
        # graph compiled in a 2-thread process would otherwise run 2 threads in a 1-thread one).
        options: dict[str, str | int | bool | Callable[..., Any]] = {"cpp.dynamic_threads": True}
        hit = _COMPILED[key] = torch.compile(fn, dynamic=dynamic, fullgraph=fullgraph, options=options)
    return hit


@torch.library.custom_op("fleetloop::materialize", mutates_args=())
def _materialize(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@_materialize.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def const_table(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """``values`` as a float32 tensor on ``like``'s device: cached per (values, device) in eager mode (a per-tick
    ``torch.tensor()`` would be a host-to-device copy on CUDA), a constant of the graph when compiling (loaded from
    memory, where an expression of an index would be recomputed for every element it broadcasts to)."""
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=torch.float32, device=like.device)
    cache: dict[tuple[tuple[float, ...], torch.device], torch.Tensor] = const_table.__dict__.setdefault("cache", {})
    key = (tuple(values), like.device)
    out = cache.get(key)
    if out is None:
        out = cache[key] = torch.tensor(values, dtype=torch.float32, device=like.device)
    return out


def materialize(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself in eager mode; in a compiled graph, ``x`` computed once into memory (an opaque copy).

    Inductor inlines a cheap elementwise producer into each consumer; where the consumer broadcasts it (a [B, K]
    angle compared with every one of 32 lidar beams) the producer, transcendental functions and all, would run
    32 times per element. The copy of a [B, K] tensor costs far less.
    """
    return _materialize(x) if torch.compiler.is_compiling() else x
