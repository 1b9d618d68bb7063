"""The ``fleetloop`` command. Sub-command groups live in one module each and are wired here."""

from __future__ import annotations

import os
import sys

import typer

from fleetloop.platform.settings import PHONE_HOME_OFF

# Switch the libraries' phone-home off before any of them is imported, in this process and its children.
for _k, _v in PHONE_HOME_OFF.items():
    os.environ[_k] = _v

from fleetloop.cli import (  # noqa: E402
    config_cmd,
    demo,
    fl,
    lake,
    model,
    model_bootstrap,
    ota,
    pipeline,
    pipeline_stages,
    runs,
    sim,
    stack,
    watch,
)
from fleetloop.cli.output import err_console  # noqa: E402
from fleetloop.platform.errors import FleetloopError  # noqa: E402
from fleetloop.platform.logs import LOG_FORMAT_ENV, LOG_FORMATS, configure_logging  # noqa: E402

__all__ = ["app", "main"]

app = typer.Typer(
    name="fleetloop",
    help="Simulate and operate the closed data loop of an autonomous-driving fleet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global_options(
    log_format: str = typer.Option(
        "text", "--log-format", envvar=LOG_FORMAT_ENV, help="text, or json: JSON log lines with correlation ids."
    ),
) -> None:
    """Simulate and operate the closed data loop of an autonomous-driving fleet."""
    if log_format not in LOG_FORMATS:
        raise typer.BadParameter(f"{log_format!r}; valid: {', '.join(LOG_FORMATS)}", param_hint="'--log-format'")
    configure_logging(log_format)  # the processes this one starts inherit it


stack.register(app)
app.add_typer(config_cmd.app, name="config", help="Show the effective settings.")
model.app.command("bootstrap")(model_bootstrap.bootstrap_cmd)
app.add_typer(model.app, name="model", help="See, bootstrap and promote fleet-policy model versions.")
app.add_typer(sim.app, name="sim", help="Launch fleet simulations; the Euro NCAP CCR matrix.")
pipeline_stages.register(pipeline.STAGES)
app.add_typer(pipeline.app, name="pipeline", help="The data loop: collect -> label -> train -> validate.")
app.add_typer(lake.app, name="lake", help="Inspect and prune the telemetry lake.")
app.add_typer(runs.app, name="runs", help="Look back at the records every command leaves.")
app.add_typer(ota.app, name="ota", help="Signed releases: keys, publish, rollout waves, offline verify.")
app.add_typer(fl.app, name="fl", help="Federated rounds: vehicles train on their own buffers.")
app.add_typer(demo.app, name="demo", help="See the whole loop once on the embedded defaults.")
app.command("watch")(watch.watch_cmd)


def main() -> None:
    """Console-script entry point: map platform errors to exit codes with a readable message."""
    try:
        # Outside standalone mode click returns the code of a `typer.Exit` instead of exiting.
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except FleetloopError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except Exception as e:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
