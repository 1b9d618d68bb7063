"""The fleet's model registry on MLflow: versions, stages, aliases and the transition log.

    from fleetloop.platform.registry import open_registry
    reg = open_registry(settings)                      # MLflow at settings.tracking_uri, checked to answer
    v = reg.register(settings.model_name, "policy.safetensors", {"format": "safetensors", ...})
    v, created = reg.register_once(name, path, {..., "training_run_id": run_id})   # never twice per training run
    reg.promote(settings.model_name, v.version, "production", reason="genesis release")
    reg.history(settings.model_name)
    reg.production(settings.model_name)                # the production version, or NotFoundError
    reg.download_model(settings.model_name, v.version, tmp)   # the path of its model file

The stage policy is pure (:mod:`.stages`); :class:`Registry` carries it out on a backend (MLflow, or
:class:`~.memory.InMemoryBackend` in unit tests). This ``__init__`` imports no MLflow: that happens in
:func:`open_registry` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetloop.platform.registry.model_file import MODEL_SUFFIX, find_model_file
from fleetloop.platform.registry.records import ModelVersionInfo, TransitionRecord
from fleetloop.platform.registry.service import Registry, default_actor
from fleetloop.platform.registry.stages import ALLOWED, Stage, parse_stage
from fleetloop.platform.tracking import Tracking, open_tracking

if TYPE_CHECKING:
    from fleetloop.platform.settings import Settings

__all__ = [
    "ALLOWED",
    "MODEL_SUFFIX",
    "ModelVersionInfo",
    "Registry",
    "Stage",
    "TransitionRecord",
    "default_actor",
    "find_model_file",
    "open_registry",
    "parse_stage",
]


def open_registry(settings: Settings, *, check: bool = True, tracking: Tracking | None = None) -> Registry:
    """The registry on the MLflow server of ``settings`` (through ``tracking`` when given, so that its retry
    notices go where the caller wants), retrying for ``settings.mlflow_retry_s``; ``check``: fail
    (ServiceUnavailable, exit 4) now if it does not answer within that time."""
    from fleetloop.platform.registry.mlflow_backend import MlflowBackend

    backend = MlflowBackend(tracking or open_tracking(settings, check=False))
    if check:
        backend.check()
    return Registry(backend)
