"""The signed-release server of the local stack (``ota-repo``): the TUF repository over HTTP, kept fresh.

One process (``python -m fleetloop.platform.services.ota_repo --state-dir S --port P``) serves
``<state_dir>/ota/repo`` on 127.0.0.1 (:mod:`fleetloop.platform.releases.server`), re-signs the timestamp before
it expires from a thread of its own (:class:`~fleetloop.platform.releases.refresher.TimestampRefresher`), and
exports its metrics on a free loopback port registered under ``<state_dir>/metrics/targets``.

``fleetloop up`` initialises the local repository (every role's keys, 0600 under ``<state_dir>/ota/keys``) when
there is none, so the local loop needs no manual step; a repository without keys, or keys without a repository,
is left alone and reported. Health is a real protocol call: GET the timestamp metadata, which must parse as a
timestamp and not be expired (a vehicle would refuse everything otherwise).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from fleetloop.platform.errors import FleetloopError, SetupError
from fleetloop.platform.logs import configure_logging
from fleetloop.platform.metrics import RELEASE_EXPIRY, counter, start_exporter
from fleetloop.platform.releases import api
from fleetloop.platform.releases.keys import keys_dir
from fleetloop.platform.releases.refresher import TimestampRefresher, check_period_s
from fleetloop.platform.releases.repository import ReleaseRepository, repo_dir
from fleetloop.platform.releases.server import make_server
from fleetloop.platform.releases.signing import Lifetimes
from fleetloop.platform.services.spec import Health, ServiceSpec
from fleetloop.platform.settings import Settings

__all__ = ["SPEC", "main", "ota_repo_health", "ota_repo_url", "repository_state"]

log = logging.getLogger(__name__)
_MARKER = "fleetloop.platform.services.ota_repo"
# The top-level roles whose expiry the server exports (RELEASE_EXPIRY; an alert fires before the timestamp's).
_EXPIRING_ROLES = ("root", "targets", "snapshot", "timestamp")


def ota_repo_url(settings: Settings) -> str:
    """The release server's base URL (``<url>/metadata/``, ``<url>/targets/``)."""
    return f"http://{settings.host}:{settings.ota_repo_port}"


def repository_state(state_dir: Path) -> str:
    """``ready`` (metadata and keys), ``absent`` (neither), ``no-keys`` or ``no-metadata``."""
    has_metadata = (repo_dir(state_dir) / "metadata" / "root.json").is_file()
    kdir = keys_dir(state_dir)
    has_keys = kdir.is_dir() and any(kdir.glob("*.pem"))
    if has_metadata and has_keys:
        return "ready"
    if not has_metadata and not has_keys:
        return "absent"
    return "no-keys" if has_metadata else "no-metadata"


def _prepare(settings: Settings, folder: Path) -> None:
    """Initialise the local repository when there is none; refuse a half-present one, saying how to fix it."""
    state = repository_state(settings.state_dir)
    if state == "absent":
        api.init_repository(settings.state_dir)
        with (folder / "service.log").open("a") as out:
            out.write(f"initialised the release repository in {repo_dir(settings.state_dir)}\n")
    elif state == "no-keys":
        raise SetupError(
            f"the release repository in {repo_dir(settings.state_dir)} has no signing keys in "
            f"{keys_dir(settings.state_dir)}; restore them (the timestamp must be re-signed daily), or move the "
            "repository away and run `fleetloop ota keys init` (vehicles built with the old root will refuse it)"
        )
    elif state == "no-metadata":
        raise SetupError(
            f"signing keys exist in {keys_dir(settings.state_dir)} but there is no release repository in "
            f"{repo_dir(settings.state_dir)}; restore it, or move the keys away and run `fleetloop ota keys init`"
        )


def _command(settings: Settings, folder: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        _MARKER,
        "--state-dir",
        str(settings.state_dir),
        "--port",
        str(settings.ota_repo_port),
        "--host",
        settings.host,
    ]


def ota_repo_health(settings: Settings) -> Health:
    """Healthy when GET /metadata/timestamp.json answers a timestamp that has not expired."""
    url = f"{ota_repo_url(settings)}/metadata/timestamp.json"
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            doc = json.loads(r.read())
        signed = doc["signed"]
        if signed["_type"] != "timestamp":
            return Health(False, f"{url} is {signed['_type']!r} metadata, not a timestamp")
        expires = datetime.strptime(signed["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        version = int(signed["version"])
    except urllib.error.HTTPError as e:
        return Health(False, f"{url} answered HTTP {e.code}")
    except (urllib.error.URLError, OSError) as e:
        return Health(False, f"no answer from {ota_repo_url(settings)}: {type(e).__name__}")
    except (ValueError, KeyError, TypeError) as e:
        return Health(False, f"{url} is not timestamp metadata ({type(e).__name__}: {e})")
    left_h = (expires - datetime.now(UTC)).total_seconds() / 3600
    if left_h <= 0:
        return Health(False, f"timestamp v{version} expired {-left_h:.1f} h ago; vehicles refuse every release")
    return Health(True, f"timestamp v{version}, expires in {left_h:.1f} h")


def _post_start(settings: Settings) -> str:
    releases = api.list_releases(settings.state_dir)
    return f"{len(releases)} release(s) signed; keys in {keys_dir(settings.state_dir)} (0600)"


SPEC = ServiceSpec(
    name="ota-repo",
    description="signed-release server (TUF repository over HTTP; re-signs its timestamp before expiry)",
    address=ota_repo_url,
    is_external=lambda s: False,
    ports=lambda s: [s.ota_repo_port],
    command=_command,
    health=ota_repo_health,
    cmdline_marker=_MARKER,
    prepare=_prepare,
    post_start=_post_start,
)


def _record(state_dir: Path, result: list[str] | FleetloopError) -> None:
    """Count a refresh check and export when each role's metadata now served expires (metrics of the server)."""
    outcome = "failed" if isinstance(result, FleetloopError) else ("resigned" if result else "not_due")
    counter(
        "fleetloop_ota_timestamp_refreshes_total",
        "Timestamp refresh checks of the release server, by outcome (resigned, not_due, failed).",
        ["outcome"],
    ).labels(outcome=outcome).inc()
    repository = ReleaseRepository(state_dir)
    for role in _EXPIRING_ROLES:
        try:
            expires = repository.load(role).signed.expires
        except (FleetloopError, OSError, ValueError) as exc:
            log.warning("cannot read the %s metadata's expiry: %s", role, exc)
            continue
        RELEASE_EXPIRY.labels(role=role).set(expires.timestamp())


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `fleetloop down` sends SIGTERM: leave through the same clean-up as Ctrl-C


def main(argv: list[str] | None = None) -> None:
    """Serve the repository, refresh its timestamp and export metrics until SIGTERM / Ctrl-C."""
    parser = argparse.ArgumentParser(prog=f"python -m {_MARKER}", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True, help="the state directory (repository and keys)")
    parser.add_argument("--port", type=int, required=True, help="TCP port to serve on")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument(
        "--refresh-period-s",
        type=float,
        default=check_period_s(Lifetimes()),
        help="how often to check whether the timestamp is due (default: a sixth of its refresh margin)",
    )
    args = parser.parse_args(argv)
    if configure_logging(process="ota-repo") == "text":  # FLEETLOOP_LOG_FORMAT, inherited from `fleetloop`
        logging.basicConfig(level=logging.INFO, format="%(asctime)s ota-repo %(message)s")
    state_dir = Path(args.state_dir)
    signal.signal(signal.SIGTERM, _interrupt)
    server = make_server(repo_dir(state_dir), args.port, args.host)
    exporter = start_exporter(Settings.model_validate({"state_dir": state_dir, "host": args.host}), "ota-repo")
    refresher = TimestampRefresher(
        lambda: api.refresh_timestamp(state_dir), args.refresh_period_s, lambda r: _record(state_dir, r)
    ).start()
    log.info(
        "serving %s on http://%s:%d; timestamp checked every %.0f s; metrics at %s",
        repo_dir(state_dir),
        args.host,
        args.port,
        args.refresh_period_s,
        exporter.url,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        refresher.stop()
        server.server_close()
        exporter.close()


if __name__ == "__main__":
    main()
