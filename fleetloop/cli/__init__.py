"""The ``fleetloop`` command: the only place that wires the parts together."""

__all__: list[str] = []
