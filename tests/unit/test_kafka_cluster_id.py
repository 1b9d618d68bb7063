"""KRaft cluster ids handed to the storage tool."""

from __future__ import annotations

import base64
import itertools

from fleetloop.platform.services.kafka import new_cluster_id


def test_an_id_that_would_start_with_a_dash_is_redrawn() -> None:
    # 0xF8 encodes to "-" as the first URL-safe base64 character: the storage tool's parser
    # took such an id for an option and refused to format (seen once in CI).
    draws = itertools.chain([b"\xf8" + b"\x00" * 15], itertools.repeat(b"\x01" * 16))
    cid = new_cluster_id(lambda: next(draws))
    assert cid == base64.urlsafe_b64encode(b"\x01" * 16).decode().rstrip("=")


def test_random_ids_are_22_characters_and_never_start_with_a_dash() -> None:
    ids = {new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(c) == 22 and not c.startswith("-") for c in ids)
