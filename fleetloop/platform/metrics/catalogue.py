"""Metrics of the control plane and the pipeline consumers, declared once here because alert rules query them.

Most metrics are declared beside the code that sets them (``fleetloop_sim_*`` in ``fleetloop.cli.sim``,
``fleetloop_pipeline_*`` in ``fleetloop.pipelines``). These are declared here instead: the alert rules in
``deploy/prometheus/rules`` need registered names, and the code that sets them lives elsewhere (the rollout
controller, the ota-repo service, the pipeline stage shell). Each help text says who sets the metric and when;
tests/prometheus/test_metrics_set.py checks, from the source, that something does.

All are labelled, so a process that imports this module but sets none of them exports no sample of them (an
unlabelled gauge would export 0, which an alert on an expiry time would read as "expired long ago").
"""

from __future__ import annotations

from fleetloop.platform.metrics.registry import gauge

__all__ = [
    "CONSUMER_LAG",
    "RELEASE_EXPIRY",
    "ROLLOUT_WAVE",
    "ROLLOUT_WAVE_STARTED",
]

ROLLOUT_WAVE = gauge(
    "fleetloop_rollout_wave",
    "The wave (1, 2, ...) a model rollout is in. Set by the rollout controller while the rollout advances or "
    "holds; its series is removed when the rollout completes, rolls back or is paused by an operator.",
    ["model", "version"],
)
ROLLOUT_WAVE_STARTED = gauge(
    "fleetloop_rollout_wave_started_timestamp_seconds",
    "Unix time the current wave of a model rollout began. Set and removed with fleetloop_rollout_wave.",
    ["model", "version"],
)
RELEASE_EXPIRY = gauge(
    "fleetloop_release_metadata_expiry_timestamp_seconds",
    "Unix time at which the signed release metadata of a role (root, targets, snapshot, timestamp) expires; "
    "vehicles refuse every release once the timestamp role has expired. Set by the ota-repo service after each "
    "refresh check (the alert rule subtracts time(), so the value stays true between checks).",
    ["role"],
)
CONSUMER_LAG = gauge(
    "fleetloop_pipeline_consumer_lag_records",
    "Records a pipeline stage has yet to consume from a topic: log end offset minus the stage's position, "
    "summed over the partitions it holds. Set by the stage after each poll.",
    ["stage", "topic"],
)
