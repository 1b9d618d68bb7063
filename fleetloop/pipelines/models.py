"""What the train and validate stages share about models, so that neither imports the other.

- where a candidate lives: the ``model/policy.safetensors`` artifact of its run in the ``fleetloop-train``
  experiment (central) or ``fleetloop-federation`` (federated), with the run tags of the candidate contract
  (``fleetloop.platform.candidates``, re-exported here) that say which model and datasets it belongs to;
- :func:`load_production`: the production model from the registry (the parent of a fine-tune, the baseline of a
  validation), or none;
- :func:`fetch_candidate`: a candidate's model file from a training run's artifact URI or a local path;
- :func:`unvalidated_candidates`: the candidate runs (central and federated) that validate has not judged yet, as
  ``model.trained`` events.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from fleetloop.pipelines.lake import path_of_uri
from fleetloop.platform.bus.events import ModelTrained
from fleetloop.platform.candidates import (
    ARTIFACT_DIR,
    ARTIFACT_FILE,
    CANDIDATE_EXPERIMENTS,
    DATASET_IDS_TAG,
    FEDERATION_EXPERIMENT,
    MODEL_TAG,
    ORIGIN_TAG,
    TRAIN_EXPERIMENT,
    VALIDATION_TAG,
    candidate_uri,
)
from fleetloop.platform.errors import DataError, NotFoundError
from fleetloop.platform.registry import find_model_file

if TYPE_CHECKING:
    from fleetloop.edge_agent.model_artifact import LoadedPolicy
    from fleetloop.platform.registry import Registry
    from fleetloop.platform.tracking import Tracking

__all__ = [
    "ARTIFACT_DIR",
    "ARTIFACT_FILE",
    "DATASET_IDS_TAG",
    "FEDERATION_EXPERIMENT",
    "MODEL_TAG",
    "TRAIN_EXPERIMENT",
    "VALIDATION_TAG",
    "candidate_uri",
    "fetch_candidate",
    "load_production",
    "unvalidated_candidates",
]


def load_production(registry: Registry, name: str, workdir: Path) -> tuple[LoadedPolicy | None, str | None]:
    """(loaded production model, its version), or (None, None) when no version of ``name`` is in production."""
    # torch comes with the artifact loader; the stage modules import this module without paying for it.
    from fleetloop.edge_agent.model_artifact import load_artifact

    try:
        info = registry.production(name)
    except NotFoundError:
        return None, None
    path = registry.download_model(name, info.version, workdir / f"production-v{info.version}")
    return load_artifact(path), info.version


def fetch_candidate(tracking: Tracking, uri: str, dst: Path) -> Path:
    """The model file of a candidate at ``uri``: a training run's artifact (``runs:/``, ``mlflow-artifacts:``),
    downloaded under ``dst``, or a local file or folder (a path or ``file://`` URI, as federated rounds announce)."""
    if uri.startswith(("runs:/", "mlflow-artifacts:")):
        try:
            where = tracking.download(uri, dst)
        except NotFoundError as e:
            raise DataError(f"cannot download the candidate {uri} ({e}); was the training run deleted?") from e
        return find_model_file(where, what=f"candidate {uri}")
    return find_model_file(path_of_uri(uri) if uri.startswith("file://") else Path(uri))


def unvalidated_candidates(
    tracking: Tracking, default_model: str, *, source: str, model: str | None = None
) -> list[ModelTrained]:
    """Every finished candidate run that validate has not judged (no ``VALIDATION_TAG``): the central training
    runs, then the federated ones, each oldest first, as the ``model.trained`` event that announces it (``source``
    names who re-announces it); ``model``: only the candidates of that registered model."""
    out = []
    for experiment, default_origin in CANDIDATE_EXPERIMENTS.items():
        for run in tracking.finished_runs(experiment, without_tag=VALIDATION_TAG):
            name = run.tags.get(MODEL_TAG, default_model)
            if model is not None and name != model:
                continue
            try:
                ids = tuple(json.loads(run.tags.get(DATASET_IDS_TAG, "[]")))
            except ValueError as e:
                raise DataError(f"candidate run {run.run_id} has a malformed {DATASET_IDS_TAG} tag ({e})") from e
            out.append(
                ModelTrained(
                    model_name=name,
                    run_id=run.run_id,
                    artifact_uri=candidate_uri(run.run_id),
                    origin=run.tags.get(ORIGIN_TAG, default_origin),
                    dataset_ids=ids,
                    source=source,
                )
            )
    return out
