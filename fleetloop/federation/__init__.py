"""fleetloop.federation: federated rounds over the fleet's vehicles, shaped like a Flower app.

    client_app.py   the vehicle: trains on its own on-board buffer, replies with weights and counts only
    server_app.py   the round: bounded node wait, seeded sampling, stragglers and bad replies dropped and counted,
                    Flower's strategy aggregates, held-out evaluation on the server
    task.py         the policy as arrays, on-board labelled data, the local update, held-out metrics
    strategies.py   strategies by name, checked against the round size; DP wrappers
    validation.py   each reply checked before aggregation (``ReplyRejected``)
    sampling.py     which vehicles a round asks
    attacks.py      Byzantine vehicles for tests and benchmarks
    privacy.py      the epsilon a DP run has spent
    buffers.py      where the vehicles' buffers are, which are usable
    state_store.py  the federation's state between calls
    runner.py       ``run_rounds(settings, cfg)`` on Flower's simulation engine, MLflow, ``model.trained``

Flower, Ray and torch are imported by the modules that use them; this package imports nothing heavy.
"""

__all__: list[str] = []
