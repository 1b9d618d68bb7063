"""The canary controller's decision core: pure functions of heartbeats, cohort statistics and a policy.

- ``policy``: the rollout policy (waves, margin, minimum exposure, alpha, metrics), from TOML.
- ``cohorts``: which vehicles form a wave's canary and its matched baseline (stratified, seeded).
- ``validate``: which heartbeats are believed, and why the others are refused.
- ``tally`` / ``stats``: believed heartbeats -> per-slice exposures and counts -> always-valid sequential tests.
- ``decide``: the verdict (continue, hold, next wave, rollback) with its evidence.
- ``controller``: the rollout's persisted state as a reducer ``step(state, event) -> (state, actions)``.

No I/O and no clock here: the controller service carries the decisions out (docs/canary.md).
"""
