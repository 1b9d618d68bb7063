"""The controller's persistent containers: an update leaves every earlier version readable and unchanged."""

from __future__ import annotations

import numpy as np

from fleetloop.platform.canary.persistent import Stack, VersionedMap


def test_every_version_of_a_versioned_map_reads_as_it_was_made_in_any_order() -> None:
    rng = np.random.default_rng(0)
    versions, oracle = [VersionedMap({"a": 0})], [{"a": 0}]
    for i in range(300):  # branch from random earlier versions, as a replayed reducer would
        j = int(rng.integers(len(versions)))
        key = f"k{int(rng.integers(20))}"
        versions.append(versions[j].set(key, i))
        oracle.append({**oracle[j], key: i})
    for j in rng.permutation(len(versions)):
        assert dict(versions[j]) == oracle[j] and len(versions[j]) == len(oracle[j])
    assert "a" in versions[0] and versions[0]["a"] == 0 and "k3" not in versions[0]


def test_a_stack_appends_without_touching_the_version_it_came_from() -> None:
    empty: Stack[int] = Stack()
    one = empty.push(1)
    two, other = one.push(2), one.push(3)
    assert list(empty) == [] and one == (1,) and two == [1, 2] and (1, 3) == other  # noqa: SIM300 (reflected ==)
    assert len(two) == 2 and two[-1] == 2 and Stack([1, 2]) == two and two != (2, 1)
