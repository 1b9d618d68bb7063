"""A task scheduled from another thread wakes kafka-python's IO loop (docs/adr/0166-kafka-io-loop-wakeup.md).

kafka-python 3.x runs each client's network on an IO thread asleep in ``select()`` until a socket is ready or a
timer is due. ``NetworkSelector.call_soon_threadsafe`` queues a task and wakes the loop; plain ``call_soon``
only queues it, and the loop's own futures call ``call_soon`` from whichever thread resolves them. When that
is the caller's thread (a commit or a fetch resolved while the consumer polls), the task waits for the next
socket event or timer, which during a rebalance or on an idle connection may never come: the caller blocks
in ``run()`` for good. Seen as a stage that, asked to stop while a rebalance had deferred its commit, hung in
``poll()`` (about one run in five on a loaded 2-core machine).

:func:`install` makes ``call_soon`` wake the loop when it is called off the IO thread (a one-byte write to the
loop's wake-up socket, as ``call_soon_threadsafe`` does). It changes nothing else and is installed on every
kafka-python client of the process once a bus client is created.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["install", "installed"]

_lock = threading.Lock()
_installed = False


def installed() -> bool:
    """Whether ``call_soon`` wakes the IO loop in this process."""
    return _installed


def install() -> bool:
    """Patch ``NetworkSelector.call_soon`` once (idempotent, thread-safe); False where kafka-python has no IO
    loop of this shape (nothing to fix)."""
    global _installed
    with _lock:
        if _installed:
            return True
        try:
            from kafka.net.selector import NetworkSelector
        except ImportError:
            return False
        if not all(hasattr(NetworkSelector, a) for a in ("call_soon", "wakeup", "start")):
            return False
        original = NetworkSelector.call_soon

        def call_soon(self: Any, task: Any) -> Any:
            queued = original(self, task)
            io_thread = getattr(self, "_io_thread", None)
            if io_thread is not None and threading.current_thread() is not io_thread:
                self.wakeup()
            return queued

        NetworkSelector.call_soon = call_soon
        _installed = True
        return True
