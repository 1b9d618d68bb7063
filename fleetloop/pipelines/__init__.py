"""fleetloop.pipelines (see DESIGN.md)."""

__all__: list[str] = []
