"""Release data shared by the signed-release tests."""

from __future__ import annotations

from typing import Any

SCHEMA = 3  # the input schema the test vehicles run


def release_meta(**overrides: Any) -> dict[str, Any]:
    """The publisher's fields of a release that passed validation."""
    meta: dict[str, Any] = {
        "run_id": "0123abcd",
        "input_schema_version": SCHEMA,
        "parent_version": "",
        "validation_report_sha256": "ab" * 32,
    }
    return {**meta, **overrides}
