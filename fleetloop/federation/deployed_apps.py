"""The apps the deployment engine runs (the FAB in ``flower_app/`` names them): the same ClientApp and ServerApp
code as the simulation engine.

- ``client_app``: the vehicles' ClientApp (``client_app.make_client_app``) with no injected behaviour; a
  SuperNode's node config names its vehicle and the buffer holding it (``fleetloop fl serve`` sets both).
- ``server_app``: reads the ``RoundsJob`` from the run config's ``job-dir`` and runs ``rounds.server_loop`` on the
  SuperLink's grid; each round's report is appended for the submitting command (``deployment.append_report``);
  one of our errors is recorded before it ends the run, so the command exits with its code.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid

from fleetloop.federation.client_app import make_client_app
from fleetloop.federation.deployment import append_report, load_job, write_error
from fleetloop.federation.rounds import server_loop
from fleetloop.federation.server_app import make_server_app
from fleetloop.platform.errors import FleetloopError
from fleetloop.platform.tracking import open_tracking

__all__ = ["client_app", "server_app"]


def _main(grid: Grid, context: Context) -> None:
    job_dir = Path(str(context.run_config["job-dir"]))
    try:
        job = load_job(job_dir)
        server_loop(job, open_tracking(job.settings), lambda r: append_report(job_dir, r))(grid, context)
    except FleetloopError as e:
        write_error(job_dir, e)
        raise


client_app = make_client_app()
server_app = make_server_app(_main)
