"""Persistent containers for the controller's per-heartbeat state: an update is O(1), and every earlier version
stays readable and unchanged, so ``controller.step`` stays a pure function without copying fleet-sized dicts.

- ``VersionedMap``: a mapping with ``set(key, value) -> VersionedMap`` (Baker's rerooted version tree: the newest
  version owns one dict, older versions hold the one-key difference to a newer one; reading an older version
  moves the dict back to it, O(versions in between)). In the controller's use each version is read once and
  succeeded once, so every update and read is O(1). Not safe to share between threads.
- ``Stack``: an append-only sequence, ``push(item) -> Stack`` in O(1) (a linked list of cells); iterating it is
  O(n) and yields the items in the order pushed. Compares equal to any sequence with the same items.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar, overload

__all__ = ["Stack", "VersionedMap"]

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

_MISSING: Any = object()


class _Node:
    """The root (``data`` set, ``newer`` None) or a difference: this version = ``newer`` with ``key`` -> ``value``
    (``_MISSING``: without ``key``)."""

    __slots__ = ("data", "key", "newer", "value")

    def __init__(self, data: dict[Any, Any] | None) -> None:
        self.data = data
        self.key: Any = None
        self.value: Any = None
        self.newer: _Node | None = None


class VersionedMap(Mapping[K, V], Generic[K, V]):
    """A persistent mapping (see the module docstring)."""

    __slots__ = ("_node",)

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._node = _Node(dict(items))

    def _data(self) -> dict[K, V]:
        node = self._node
        if node.newer is None:
            assert node.data is not None
            return node.data
        path = []
        while node.newer is not None:
            path.append(node)
            node = node.newer
        data = node.data
        assert data is not None
        for older in reversed(path):  # move the dict one version back at a time, inverting each difference
            root = older.newer
            assert root is not None
            was = data.get(older.key, _MISSING)
            if older.value is _MISSING:
                del data[older.key]
            else:
                data[older.key] = older.value
            root.data, root.key, root.value, root.newer = None, older.key, was, older
            older.data, older.newer = data, None
        return data

    def set(self, key: K, value: V) -> VersionedMap[K, V]:
        """This mapping with ``key`` -> ``value``; ``self`` is unchanged."""
        data = self._data()
        was = data.get(key, _MISSING)
        data[key] = value
        new = VersionedMap.__new__(VersionedMap)
        new._node = _Node(data)
        old = self._node
        old.data, old.key, old.value, old.newer = None, key, was, new._node
        return new

    def __getitem__(self, key: K) -> V:
        return self._data()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data()

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._data()))

    def __len__(self) -> int:
        return len(self._data())

    def __repr__(self) -> str:
        return f"VersionedMap({self._data()!r})"


class _Cell(Generic[T]):
    __slots__ = ("item", "prev")

    def __init__(self, item: T, prev: _Cell[T] | None) -> None:
        self.item, self.prev = item, prev


class Stack(Sequence[T], Generic[T]):
    """A persistent append-only sequence (see the module docstring)."""

    __slots__ = ("_len", "_top")

    def __init__(self, items: Iterable[T] = ()) -> None:
        self._top: _Cell[T] | None = None
        self._len = 0
        for item in items:
            self._top, self._len = _Cell(item, self._top), self._len + 1

    def push(self, item: T) -> Stack[T]:
        """This sequence with ``item`` appended; ``self`` is unchanged."""
        new: Stack[T] = Stack.__new__(Stack)
        new._top, new._len = _Cell(item, self._top), self._len + 1
        return new

    def _items(self) -> list[T]:
        out, cell = [], self._top
        while cell is not None:
            out.append(cell.item)
            cell = cell.prev
        out.reverse()
        return out

    def __iter__(self) -> Iterator[T]:
        return iter(self._items())

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...
    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        return self._items()[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(other) == self._len and list(other) == self._items()

    def __hash__(self) -> int:
        return hash(tuple(self._items()))

    def __repr__(self) -> str:
        return f"Stack({self._items()!r})"
