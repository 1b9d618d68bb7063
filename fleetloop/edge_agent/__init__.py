"""fleetloop.edge_agent (see DESIGN.md)."""

__all__: list[str] = []
