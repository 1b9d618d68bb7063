"""The candidate contract: how a model waiting for validation is found in MLflow, whoever made it.

A candidate is a FINISHED run in one of ``CANDIDATE_EXPERIMENTS`` holding the model at
``ARTIFACT_DIR/ARTIFACT_FILE``, with these run tags:

    fleetloop.model          the registered model it is a candidate version of
    fleetloop.origin         "central" (a fine-tune, experiment fleetloop-train) or "federated" (rounds, experiment
                             fleetloop-federation); a run without it has its experiment's origin
    fleetloop.dataset_ids    central: JSON list of the labelled datasets it was trained on
    fleetloop.rounds         federated: the federation's rounds so far
    fleetloop.participants_count   federated: vehicles whose updates were aggregated, over every round so far
    fleetloop.parent_version federated: the registry version the federation started from ("none": a local file)
    fleetloop.validation     set by validate when its verdict is committed: "passed" or "rejected"; a finished run
                             without it waits for validation

The training stage and the federation write it; the validate stage (``pipelines.models.unvalidated_candidates``)
reads it. Neither imports the other: both import this module.
"""

from __future__ import annotations

__all__ = [
    "ARTIFACT_DIR",
    "ARTIFACT_FILE",
    "CANDIDATE_EXPERIMENTS",
    "DATASET_IDS_TAG",
    "FEDERATION_EXPERIMENT",
    "MODEL_TAG",
    "ORIGIN_TAG",
    "PARENT_VERSION_TAG",
    "PARTICIPANTS_COUNT_TAG",
    "ROUNDS_TAG",
    "TRAIN_EXPERIMENT",
    "VALIDATION_TAG",
    "candidate_uri",
]

TRAIN_EXPERIMENT = "fleetloop-train"
"""MLflow experiment of the central training runs (one run per candidate)."""
FEDERATION_EXPERIMENT = "fleetloop-federation"
"""MLflow experiment of the federated runs (one run per ``fleetloop fl round`` call, one candidate each)."""
CANDIDATE_EXPERIMENTS: dict[str, str] = {TRAIN_EXPERIMENT: "central", FEDERATION_EXPERIMENT: "federated"}
"""Where validate looks for candidates, and the origin of a run there that carries no ``ORIGIN_TAG``."""
ARTIFACT_DIR = "model"
ARTIFACT_FILE = "policy.safetensors"
MODEL_TAG = "fleetloop.model"
ORIGIN_TAG = "fleetloop.origin"
DATASET_IDS_TAG = "fleetloop.dataset_ids"
ROUNDS_TAG = "fleetloop.rounds"
PARTICIPANTS_COUNT_TAG = "fleetloop.participants_count"
PARENT_VERSION_TAG = "fleetloop.parent_version"
VALIDATION_TAG = "fleetloop.validation"


def candidate_uri(run_id: str) -> str:
    """The artifact URI of the candidate model of run ``run_id``."""
    return f"runs:/{run_id}/{ARTIFACT_DIR}/{ARTIFACT_FILE}"
