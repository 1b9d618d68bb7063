"""Signed releases: a TUF repository of model artifacts, rollout waves as signed delegations, and its server.

    from fleetloop.platform.releases import api
    api.init_repository(state_dir)                                   # keys (2-of-3 root) + version 1 metadata
    fields = api.publish(state_dir, "policy", "7", path, {"run_id": ..., "input_schema_version": 3, ...})
    api.assign_wave(state_dir, fields.release, 1, VehicleList(("v-0001", "v-0002")))
    api.rotate_key(state_dir, "timestamp")

The vehicle side is :mod:`fleetloop.edge_agent.ota_verify`. What is signed, the key layout and the threats
covered are in docs/ota.md. This ``__init__`` imports nothing: python-tuf loads with the submodules.
"""

__all__: list[str] = []
