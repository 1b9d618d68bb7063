"""One metrics exporter per process: an HTTP endpoint on a loopback port, registered for discovery.

``start_exporter(settings, "sim")`` serves the platform registry at ``http://127.0.0.1:PORT/metrics``
(a free port unless one is asked for) and writes ``<state_dir>/metrics/targets/sim-<pid>.json``.
``handle.close()`` (or process exit, through ``atexit``) stops the server and removes the file.
"""

from __future__ import annotations

import atexit
import errno
import os
import threading
from types import TracebackType
from typing import Any

from prometheus_client import start_http_server

from fleetloop.platform.errors import SetupError
from fleetloop.platform.metrics.registry import REGISTRY, MetricsRegistry
from fleetloop.platform.metrics.targets import format_address, register_target, remove_target
from fleetloop.platform.settings import Settings

__all__ = ["ExporterHandle", "start_exporter"]

# A server bound to a wildcard address is scraped on loopback.
_WILDCARD_HOSTS = {"", "0.0.0.0", "::"}

_open_lock = threading.Lock()
_open: dict[str, ExporterHandle] = {}


class ExporterHandle:
    """A running exporter: its address, its target file, and ``close()`` (idempotent; also a context manager)."""

    def __init__(self, process_name: str, host: str, server: Any, thread: threading.Thread, target_path: Any) -> None:
        self.process_name = process_name
        self.pid = os.getpid()
        self.host = host
        self.port: int = int(server.server_port)
        self.target_path = target_path
        self._server = server
        self._thread = thread
        self._closed = False
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        """``host:port`` as Prometheus scrapes it."""
        return format_address(self.host, self.port)

    @property
    def url(self) -> str:
        """The metrics endpoint, ``http://host:port/metrics``."""
        return f"http://{self.address}/metrics"

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop serving and remove the target file. Safe to call twice and from ``atexit``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        with _open_lock:
            if _open.get(self.process_name) is self:
                del _open[self.process_name]
        # A forked child inherits this handle (and its atexit hook): only the process that
        # registered the target may remove it, or a child's exit would unregister its parent.
        if os.getpid() == self.pid:
            remove_target(self.target_path)
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5.0)

    def __enter__(self) -> ExporterHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving"
        return f"ExporterHandle({self.process_name!r}, {self.url}, {state})"


def start_exporter(
    settings: Settings,
    process_name: str,
    *,
    port: int = 0,
    registry: MetricsRegistry | None = None,
    labels: dict[str, str] | None = None,
) -> ExporterHandle:
    """Serve ``registry`` (the platform registry by default) on ``settings.host`` and register it for discovery.

    ``port=0`` takes a free port. Starting a second exporter under the same ``process_name`` in one
    process returns the running one (when the port request agrees), so composed commands can each ask.
    Raises ``SetupError`` when the requested port is taken or the state directory is not writable.
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics port {port} is outside 0-65535; use 0 for a free port")
    with _open_lock:
        running = _open.get(process_name)
        # A forked child inherits the parent's table but not its server thread: it starts its own.
        if running is not None and not running.closed and running.pid == os.getpid():
            if port not in (0, running.port):
                raise SetupError(
                    f"process {process_name!r} already exports metrics on port {running.port}; "
                    f"close that exporter before asking for port {port}"
                )
            return running
        reg = registry or REGISTRY
        try:
            server, thread = start_http_server(port, addr=settings.host, registry=reg.collector_registry)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise SetupError(
                    f"metrics port {port} on {settings.host} is in use by another process; "
                    f"pick another port, or 0 for a free one"
                ) from e
            raise SetupError(f"cannot serve metrics on {settings.host}:{port}: {e.strerror or e}") from e
        host = "127.0.0.1" if settings.host in _WILDCARD_HOSTS else settings.host
        bound_port = int(server.server_port)
        try:
            path = register_target(
                settings.state_dir, process_name, format_address(host, bound_port), labels, pid=os.getpid()
            )
        except BaseException:
            server.shutdown()
            server.server_close()
            raise
        handle = ExporterHandle(process_name, host, server, thread, path)
        _open[process_name] = handle
    atexit.register(handle.close)
    return handle
