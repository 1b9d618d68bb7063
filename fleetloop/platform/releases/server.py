"""The release server: the repository directory over HTTP on 127.0.0.1, with byte ranges for resumed downloads.

    python -m fleetloop.platform.releases.server --dir <state_dir>/ota/repo --port 8765

Files only (no directory listings), GET and HEAD, one thread per connection. The server needs no keys and
is trusted with nothing: a vehicle verifies everything it serves, so a compromised server can withhold
releases but not make a vehicle install one.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import threading
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

from fleetloop.platform.errors import SetupError
from fleetloop.platform.logs import configure_logging

__all__ = ["RangeRequestHandler", "Unsatisfiable", "main", "make_server", "parse_range", "start_in_thread"]

log = logging.getLogger(__name__)
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_COPY_CHUNK_BYTES = 1 << 16


class Unsatisfiable(ValueError):
    """A byte range that starts past the end of the file (HTTP 416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range ``(first, last)`` a ``Range`` header asks of a ``size``-byte file, or None for all.

    One range only (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``); anything else is ignored and the whole file is
    served, as RFC 9110 allows. A range starting at or past the end raises :class:`Unsatisfiable`.
    """
    if header is None:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None or (not m[1] and not m[2]):
        return None
    if not m[1]:  # suffix: the last n bytes
        n = int(m[2])
        if n == 0:
            raise Unsatisfiable(header)
        return max(size - n, 0), size - 1
    first = int(m[1])
    last = min(int(m[2]), size - 1) if m[2] else size - 1
    if first >= size:
        raise Unsatisfiable(header)
    if last < first:
        return None
    return first, last


class RangeRequestHandler(SimpleHTTPRequestHandler):
    """Serves files under ``directory`` with single byte ranges; logs at debug level instead of stderr."""

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _serve(self, send_body: bool) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(HTTPStatus.NOT_FOUND, "no such file")
            return
        with path.open("rb") as f:
            size = path.stat().st_size
            try:
                span = parse_range(self.headers.get("Range"), size)
            except Unsatisfiable:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            first, last = span if span is not None else (0, size - 1)
            self.send_response(HTTPStatus.PARTIAL_CONTENT if span is not None else HTTPStatus.OK)
            self.send_header("Content-Type", self.guess_type(str(path)))
            self.send_header("Content-Length", str(last - first + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Cache-Control", "no-store")  # timestamp.json changes in place
            if span is not None:
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            self.end_headers()
            if send_body:
                f.seek(first)
                self.send_body(f, last - first + 1)

    def send_body(self, f: BinaryIO, length_bytes: int) -> None:
        """Copy ``length_bytes`` of ``f`` to the client (a seam for tests that cut a transfer short)."""
        shutil.copyfileobj(_Limited(f, length_bytes), self.wfile, _COPY_CHUNK_BYTES)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Limited:
    """A reader that stops after ``left`` bytes."""

    def __init__(self, f: BinaryIO, left: int) -> None:
        self._f, self._left = f, left

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data


def make_server(
    directory: Path, port: int, host: str = "127.0.0.1", handler: type[RangeRequestHandler] = RangeRequestHandler
) -> ThreadingHTTPServer:
    """A bound (not yet serving) threaded server for ``directory``; port 0 picks a free one."""
    if not Path(directory).is_dir():
        raise SetupError(f"release repository {directory} does not exist; run `fleetloop ota keys init` first")
    try:
        server = ThreadingHTTPServer((host, port), partial(handler, directory=str(directory)))
    except OSError as exc:
        raise SetupError(f"cannot listen on {host}:{port} ({exc}); pick a free port") from exc
    server.daemon_threads = True
    return server


def start_in_thread(
    directory: Path, port: int = 0, handler: type[RangeRequestHandler] = RangeRequestHandler
) -> tuple[ThreadingHTTPServer, str]:
    """Serve ``directory`` from a daemon thread; return the server (``shutdown()`` it) and its base URL."""
    server = make_server(directory, port, handler=handler)
    threading.Thread(target=server.serve_forever, name="ota-repo", daemon=True).start()
    host, bound_port = server.server_address[:2]
    return server, f"http://{host!s}:{bound_port}"


def main(argv: list[str] | None = None) -> None:
    """Run the server until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="the repository directory (<state_dir>/ota/repo)")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    args = parser.parse_args(argv)
    if configure_logging(process="ota-repo") == "text":  # FLEETLOOP_LOG_FORMAT, inherited from `fleetloop`
        logging.basicConfig(level=logging.INFO, format="%(asctime)s ota-repo %(message)s")
    server = make_server(args.dir, args.port, args.host)
    log.info("serving %s on http://%s:%d", args.dir, args.host, args.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
