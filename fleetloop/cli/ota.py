"""`fleetloop ota ...`: the operator's side of signed releases (keys, publish, waves, listing, offline verify).

    fleetloop ota keys init                          every role's keys and version 1 of the repository
    fleetloop ota keys rotate ROLE                   new keys for root, targets, snapshot, timestamp or rollout
    fleetloop ota publish NAME VERSION [--rollback]  sign a validated registry version as a release
    fleetloop ota assign RELEASE --wave N (--vehicles 0-99 | --share 0.1)   which vehicles may install it
    fleetloop ota install NAME VERSION --release R   send the install command to the wave's vehicles (Kafka)
    fleetloop ota install ... --shadow               the same vehicles run it beside their model, never acting
    fleetloop ota releases                           what is signed, with its waves
    fleetloop ota verify PATH                        the vehicle's full check of a file, offline
    fleetloop ota refresh                            re-sign what is near expiry (the ota-repo service does it too)

The repository lives under ``<state_dir>/ota`` (docs/ota.md); `fleetloop up` serves it as the ``ota-repo``
service. Errors come from the platform's tree and map to exit codes (2 bad input, 3 no repository, 5 refused).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from fleetloop.cli.output import console, emit, err_console
from fleetloop.cli.release_source import release_source
from fleetloop.cli.validate_args import POSITIVE_FLOAT, POSITIVE_INT, SHARE
from fleetloop.platform import launcher
from fleetloop.platform.bus import OTA_COMMANDS, BusProducer, OtaCommand
from fleetloop.platform.canary.operator import (
    check_rollout,
    cohort_summary,
    history_view,
    release_of,
    request_rollout,
    status_view,
)
from fleetloop.platform.canary.policy import CanaryPolicy, load_policy
from fleetloop.platform.canary.rollouts import RolloutRecord, RolloutStore
from fleetloop.platform.canary.service import ControllerConfig
from fleetloop.platform.errors import NotFoundError, ServiceUnavailable
from fleetloop.platform.logs import bind_log_context
from fleetloop.platform.registry import open_registry
from fleetloop.platform.releases import api
from fleetloop.platform.releases.cohorts import (
    DEFAULT_BUCKETS,
    CohortRule,
    HashRange,
    VehicleList,
    in_cohort,
    rule_to_custom,
)
from fleetloop.platform.releases.errors import BadReleaseInput
from fleetloop.platform.releases.fields import ReleaseFields
from fleetloop.platform.releases.keys import ONLINE_ROLES, ROOT_KEY_COUNT, ROOT_THRESHOLD, keys_dir
from fleetloop.platform.releases.repository import ReleaseSummary, repo_dir
from fleetloop.platform.services import ota_controller
from fleetloop.platform.settings import Settings, load_settings

__all__ = [
    "app",
    "cohort_rule",
    "install_targets",
    "parse_vehicle_ids",
    "publish_release",
    "send_install",
    "start_rollout",
    "wait_rollout",
]

app = typer.Typer(no_args_is_help=True)
keys_app = typer.Typer(no_args_is_help=True)
app.add_typer(keys_app, name="keys", help="Create or rotate the signing keys.")

MAX_LISTED_VEHICLES = 100_000  # a wave's list is signed metadata every vehicle downloads; larger cohorts: --share
_JSON = typer.Option(False, "--json", help="Print one JSON object.")


# ---- pure helpers ----------------------------------------------------------------------------------------------


def parse_vehicle_ids(spec: str) -> tuple[str, ...]:
    """Vehicle ids from ``0-99,150,v-7``: inclusive numeric ranges and single ids, in order, without repeats."""
    ids: dict[str, None] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if sep and lo.isdigit() and hi.isdigit():
            if int(hi) < int(lo):
                raise BadReleaseInput(f"--vehicles range {part!r} ends before it starts; write it low-high")
            if int(hi) - int(lo) + 1 + len(ids) > MAX_LISTED_VEHICLES:
                raise BadReleaseInput(
                    f"--vehicles lists more than {MAX_LISTED_VEHICLES} vehicles; sign a share of the fleet instead "
                    "(--share 0.1)"
                )
            ids.update(dict.fromkeys(str(i) for i in range(int(lo), int(hi) + 1)))
        else:
            ids[part] = None
    if not ids:
        raise BadReleaseInput(f"--vehicles {spec!r} names no vehicle; e.g. --vehicles 0-99 or --vehicles 3,17")
    return tuple(ids)


def cohort_rule(vehicles: str | None, share: float | None) -> CohortRule:
    """The signed cohort of a wave: listed vehicles, or the first ``share`` of the fleet's hash buckets."""
    if (vehicles is None) == (share is None):
        raise BadReleaseInput("give exactly one of --vehicles (e.g. 0-99) or --share (e.g. 0.1 for 10 % of the fleet)")
    if vehicles is not None:
        return VehicleList(parse_vehicle_ids(vehicles))
    assert share is not None
    hi = round(share * DEFAULT_BUCKETS)
    if not 0 < share <= 1 or hi < 1:
        raise BadReleaseInput(
            f"--share {share} must lie in (0, 1] and cover at least one bucket (1/{DEFAULT_BUCKETS} of the fleet)"
        )
    return HashRange(0, hi, DEFAULT_BUCKETS)


def _cohort_text(cohort: dict[str, Any]) -> str:
    if cohort["kind"] == "vehicle_ids":
        ids = cohort["vehicle_ids"]
        shown = ", ".join(ids[:3]) + (f", … {ids[-1]}" if len(ids) > 3 else "")
        return f"{len(ids)} vehicle(s): {shown}"
    share = (cohort["hi_bucket"] - cohort["lo_bucket"]) / cohort["buckets"]
    return f"{share:.2%} of the fleet (buckets {cohort['lo_bucket']}-{cohort['hi_bucket'] - 1} of {cohort['buckets']})"


def _cohort_short(cohort: dict[str, Any]) -> str:
    if cohort["kind"] == "vehicle_ids":
        return f"{len(cohort['vehicle_ids'])} ids"
    return f"{(cohort['hi_bucket'] - cohort['lo_bucket']) / cohort['buckets']:.1%}"


def _summary_dict(s: ReleaseSummary) -> dict[str, Any]:
    waves = [{"wave": w.wave, "role": w.role, "cohort": rule_to_custom(w.rule)} for w in s.waves]
    return {**s.fields.to_custom(), "target_path": s.target_path, "waves": waves}


def _fields_line(f: dict[str, Any]) -> str:
    parent = f"parent v{f['parent_version']}" if f["parent_version"] else "no parent"
    report = f"report {f['validation_report_sha256'][:12]}…" if f["validation_report_sha256"] else "no report"
    run = f"run {f['run_id'][:8]}" if f["run_id"] else "no run"
    return (
        f"sha256 {f['sha256'][:12]}…, {f['length_bytes']:,} bytes, input schema {f['input_schema_version']}, "
        f"{run}, {parent}, {report}"
    )


def _emit_text(data: dict[str, Any], as_json: bool, text: Callable[[dict[str, Any]], str]) -> None:
    """Print ``data`` as JSON (``--json``) or as the summary ``text(data)`` for people."""
    emit(data, as_json, lambda d: console.print(text(d), highlight=False))


def install_targets(
    release: ReleaseSummary, vehicles: str | None, fleet_size: int | None, wave: int | None
) -> tuple[str, ...]:
    """The vehicles an install command goes to: ``--vehicles`` as given (a vehicle no signed wave lists refuses
    it), else those the release's signed waves (or only wave ``wave``) list; a hash-range wave needs the fleet's
    ids 0..fleet_size-1 to pick from."""
    if vehicles is not None:
        return parse_vehicle_ids(vehicles)
    waves = [w for w in release.waves if wave is None or w.wave == wave]
    if not waves:
        raise BadReleaseInput(
            f"release {release.fields.release} has no signed wave{'' if wave is None else f' {wave}'}; "
            f"`fleetloop ota assign {release.fields.release} --wave 1 --vehicles ...` first"
        )
    ids: dict[str, None] = {}
    for w in waves:
        if isinstance(w.rule, VehicleList):
            ids.update(dict.fromkeys(w.rule.vehicle_ids))
        elif fleet_size is None:
            raise BadReleaseInput(
                f"wave {w.wave} of release {release.fields.release} is a share of the fleet; give --fleet-size N "
                "(vehicle ids 0..N-1) to pick its vehicles"
            )
        else:
            ids.update(dict.fromkeys(v for v in map(str, range(fleet_size)) if in_cohort(w.rule, v)))
    return tuple(ids)


# ---- keys ------------------------------------------------------------------------------------------------------


@keys_app.command("init")
def keys_init_cmd(as_json: bool = _JSON) -> None:
    """Generate every role's keys (0600) and sign version 1 of the release repository."""
    settings = load_settings()
    api.init_repository(settings.state_dir)
    data = {
        "repository": str(repo_dir(settings.state_dir)),
        "keys_dir": str(keys_dir(settings.state_dir)),
        "root_keys": ROOT_KEY_COUNT,
        "root_threshold": ROOT_THRESHOLD,
        "online_roles": list(ONLINE_ROLES),
        "root_version": 1,
    }

    _emit_text(
        data,
        as_json,
        lambda d: (
            f"initialised the release repository in {d['repository']}\n"
            f"keys in {d['keys_dir']} (0600): {d['root_keys']} root keys (any {d['root_threshold']} sign root; "
            f"keep them offline in production), one each for {', '.join(d['online_roles'])}"
        ),
    )


@keys_app.command("rotate")
def keys_rotate_cmd(
    role: str = typer.Argument(..., help="root, targets, snapshot, timestamp or rollout."),
    as_json: bool = _JSON,
) -> None:
    """Replace a role's keys; vehicles follow the signed root chain to the new ones."""
    settings = load_settings()
    root_version = api.rotate_key(settings.state_dir, role)
    data = {"role": role, "root_version": root_version, "keys_dir": str(keys_dir(settings.state_dir))}

    how = (
        "every rollout wave re-signed with the new key"
        if role == "rollout"
        else f"root is now version {root_version}, signed by the old and the new keys"
    )
    _emit_text(data, as_json, lambda d: f"rotated the {role} keys in {d['keys_dir']}; {how}")


# ---- releases --------------------------------------------------------------------------------------------------


def _latest(releases: list[ReleaseSummary], name: str, version: str) -> ReleaseFields | None:
    """The newest release of (name, version), if it was ever signed."""
    found = [s.fields for s in releases if (s.fields.model_name, s.fields.version) == (name, version)]
    return found[-1] if found else None


def publish_release(settings: Settings, name: str, version: str, *, rollback: bool = False) -> dict[str, Any]:
    """Sign registry version ``version`` of ``name`` as a release (once; again only as a ``rollback``)."""
    signed = api.list_releases(settings.state_dir)  # no repository: say so before downloading anything
    registry = open_registry(settings)
    with tempfile.TemporaryDirectory(prefix="fleetloop-publish-") as tmp:
        source = release_source(settings, registry, name, version, rollback=rollback, workdir=Path(tmp))
        before = _latest(signed, name, source.version)
        if before is not None and not rollback:
            fields, changed = before, False  # a registry version is immutable: publishing it again changes nothing
        elif before is not None:
            fields, changed = api.republish(settings.state_dir, name, source.version), True
        else:
            fields = api.publish(settings.state_dir, name, source.version, source.artifact, source.custom)
            changed = True
    bind_log_context(model_version=f"{name}/{source.version}", rollout=f"release {fields.release}")
    logging.getLogger(__name__).info(
        "release %s signs %s v%s (changed: %s)", fields.release, name, source.version, changed
    )
    data = {
        "release": fields.to_custom(),
        "stage": source.stage,
        "rollback": rollback,
        "changed": changed,
        "notes": source.notes,
    }
    return data


@app.command("publish")
def publish_cmd(
    name: str = typer.Argument(..., help="Registered model, e.g. fleet-policy."),
    version: str = typer.Argument(..., help="Registry version (staging, canary or production)."),
    rollback: bool = typer.Option(
        False, "--rollback", help="Authorised rollback: sign this (archived or earlier) version as a new release."
    ),
    as_json: bool = _JSON,
) -> None:
    """Sign a validated registry version as a release (model file, run, schema, lineage, validation report)."""
    data = publish_release(load_settings(), name, version, rollback=rollback)

    def render(d: dict[str, Any]) -> None:
        f = d["release"]
        if not d["changed"]:
            console.print(
                f"{name} v{f['version']} is already signed as release {f['release']}; nothing changed "
                "(re-publish it under a new number only as a rollback: --rollback)",
                highlight=False,
            )
            return
        kind = "rollback release" if d["rollback"] else "release"
        console.print(
            f"signed {kind} {f['release']}: {name} v{f['version']} ({d['stage']})\n  {_fields_line(f)}", highlight=False
        )
        for note in d["notes"]:
            console.print(f"  [dim]note: {note} (signed as empty)[/]", highlight=False)
        console.print(
            f"  no vehicle installs it yet: `fleetloop ota assign {f['release']} --wave 1 --share 0.01`",
            highlight=False,
        )

    emit(data, as_json, render)


@app.command("assign")
def assign_cmd(
    release: int = typer.Argument(..., click_type=POSITIVE_INT, help="Release number (`fleetloop ota releases`)."),
    wave: int = typer.Option(..., "--wave", click_type=POSITIVE_INT, help="Wave number: 1, 2, ... without gaps."),
    vehicles: str | None = typer.Option(None, "--vehicles", help="Vehicle ids: ranges and ids, e.g. 0-99,150."),
    share: float | None = typer.Option(
        None, "--share", click_type=SHARE, help="Share of the fleet by stable hash, e.g. 0.1."
    ),
    as_json: bool = _JSON,
) -> None:
    """Sign which vehicles may install a release in a wave (a wave of a larger share includes the earlier ones)."""
    rule = cohort_rule(vehicles, share)
    settings = load_settings()
    assigned = api.assign_wave(settings.state_dir, release, wave, rule)
    bind_log_context(rollout=f"release {release}")
    logging.getLogger(__name__).info("wave %d assigned: %s", assigned.wave, rule_to_custom(rule))
    data = {"release": release, "wave": assigned.wave, "role": assigned.role, "cohort": rule_to_custom(rule)}

    _emit_text(
        data,
        as_json,
        lambda d: f"release {d['release']} wave {d['wave']}: {_cohort_text(d['cohort'])} (signed as {d['role']})",
    )


def send_install(
    settings: Settings,
    name: str,
    version: str,
    release: int,
    *,
    wave: int | None = None,
    vehicles: str | None = None,
    fleet_size: int | None = None,
    rollout_id: str | None = None,
    shadow: bool = False,
) -> dict[str, Any]:
    """Send release ``release`` (``name`` v``version``)'s install (or ``shadow``) command to its wave's vehicles
    (or ``vehicles``)."""
    found = [s for s in api.list_releases(settings.state_dir) if s.fields.release == release]
    if not found or (found[0].fields.model_name, found[0].fields.version) != (name, version):
        what = "no such release" if not found else f"it is {found[0].fields.model_name} v{found[0].fields.version}"
        raise BadReleaseInput(f"release {release} is not {name} v{version} ({what}); see `fleetloop ota releases`")
    targets = install_targets(found[0], vehicles, fleet_size, wave)
    rollout = rollout_id or f"release-{release}"
    if not version.isdigit():
        raise BadReleaseInput(f"version {version!r} is not a registry version number; commands carry a number")
    with BusProducer(settings, client_id="ota-install") as producer:
        for v in targets:
            producer.send(
                OTA_COMMANDS,
                OtaCommand(
                    rollout_id=rollout,
                    vehicle_id=v,
                    model_name=name,
                    version=int(version),
                    release=release,
                    action="shadow" if shadow else "install",
                    source="fleetloop ota install",
                ),
            )
        producer.flush()
    data = {
        "release": release,
        "model_name": name,
        "version": version,
        "rollout_id": rollout,
        "action": "shadow" if shadow else "install",
        "vehicles": list(targets),
    }
    return data


@app.command("install")
def install_cmd(
    name: str = typer.Argument(..., help="Registered model, e.g. fleet-policy."),
    version: str = typer.Argument(..., help="Registry version of the release."),
    release: int = typer.Option(
        ..., "--release", click_type=POSITIVE_INT, help="The signed release number (`fleetloop ota releases`)."
    ),
    wave: int | None = typer.Option(
        None, "--wave", click_type=POSITIVE_INT, help="Only this wave's vehicles (default: every wave's)."
    ),
    vehicles: str | None = typer.Option(None, "--vehicles", help="Send to these ids instead, e.g. 0-9 (not signed)."),
    fleet_size: int | None = typer.Option(
        None,
        "--fleet-size",
        click_type=POSITIVE_INT,
        help="Vehicle ids 0..N-1 to pick a share-of-the-fleet wave's vehicles from.",
    ),
    rollout_id: str | None = typer.Option(None, "--rollout-id", help="Names the rollout in the vehicles' statuses."),
    shadow: bool = typer.Option(
        False,
        "--shadow",
        help="Shadow mode: the vehicles verify and load the release the same way, run it beside their active model "
        "without acting on it and report how far the two disagree (state shadow_report on fleetloop.ota-status).",
    ),
    as_json: bool = _JSON,
) -> None:
    """Send the install command of a signed release to its wave's vehicles on fleetloop.ota-commands.

    A command authorises nothing: each vehicle installs only what the signed waves assign to it. With --shadow the
    command's action is "shadow"; a later install command of the same release promotes it without a new download."""
    data = send_install(
        load_settings(),
        name,
        version,
        release,
        wave=wave,
        vehicles=vehicles,
        fleet_size=fleet_size,
        rollout_id=rollout_id,
        shadow=shadow,
    )
    rollout = data["rollout_id"]
    _emit_text(
        data,
        as_json,
        lambda d: (
            f"sent {len(d['vehicles']):,} {d['action']} command(s) for release {release} ({name} v{version}) to "
            f"{OTA_COMMANDS.name}, rollout {rollout}: vehicles {_ids_text(d['vehicles'])}"
        ),
    )


def _ids_text(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (f", … {ids[-1]}" if len(ids) > 5 else "")


@app.command("releases")
def releases_cmd(as_json: bool = _JSON) -> None:
    """List every signed release with its signed fields and rollout waves, oldest first."""
    settings = load_settings()
    data = {
        "repository": str(repo_dir(settings.state_dir)),
        "releases": [_summary_dict(s) for s in api.list_releases(settings.state_dir)],
    }

    def render(d: dict[str, Any]) -> None:
        if not d["releases"]:
            console.print(
                f"no releases signed in {d['repository']}; `fleetloop ota publish NAME VERSION` signs one",
                highlight=False,
            )
            return
        table = Table(title=f"signed releases ({d['repository']})")
        for col in ("release", "model", "version", "sha256", "schema", "parent", "waves"):
            table.add_column(col, justify="right" if col in ("release", "version", "schema") else "left")
        for r in d["releases"]:
            waves = ", ".join(f"{w['wave']}: {_cohort_short(w['cohort'])}" for w in r["waves"]) or "[dim]none[/]"
            table.add_row(
                str(r["release"]),
                r["model_name"],
                r["version"],
                r["sha256"][:12] + "…",
                str(r["input_schema_version"]),
                r["parent_version"] or "-",
                waves,
            )
        console.print(table)

    emit(data, as_json, render)


@app.command("verify")
def verify_cmd(
    path: Path = typer.Argument(..., help="A downloaded artifact file."),
    as_json: bool = _JSON,
) -> None:
    """Check a file offline as a vehicle would: root chain, signatures, expiry, length and sha256 (exit 5 if not)."""
    settings = load_settings()
    fields = api.verify_file(settings.state_dir, path)
    f = fields.to_custom()
    data = {"path": str(path), "verified": True, "release": f}
    _emit_text(
        data,
        as_json,
        lambda d: (
            f"{d['path']} verifies: release {f['release']}, {f['model_name']} v{f['version']}\n  {_fields_line(f)}"
        ),
    )


@app.command("refresh")
def refresh_cmd(as_json: bool = _JSON) -> None:
    """Re-sign the metadata that is near expiry (the ota-repo service does this on its own)."""
    settings = load_settings()
    roles = api.refresh_timestamp(settings.state_dir)
    data = {"resigned": roles}

    _emit_text(
        data, as_json, lambda d: f"re-signed {', '.join(d['resigned'])}" if d["resigned"] else "nothing near expiry"
    )


# ---- canary rollouts (docs/canary.md) ----------------------------------------------------------------------------

_POLICY_DEFAULTS = ", ".join(
    f"{k}={{{', '.join(f'{m}={f:g}' for m, f in v.items())}}}" if isinstance(v, dict) else f"{k}={v}"
    for k, v in CanaryPolicy().to_dict().items()
)
_ROLLOUT = typer.Option(None, "--rollout", help="Rollout id (default: the one running).")
_REASON = typer.Option("", "--reason", help="Why, for the record.")
_DONE = ("promoted", "rolled_back", "aborted")


def _signed_release(settings: Any, registry: Any, name: str, version: str) -> int:
    """The release number of a registry version, signing it first when it never was."""
    found = release_of(settings.state_dir, name, int(version))
    if found is not None:
        return found
    with tempfile.TemporaryDirectory(prefix="fleetloop-publish-") as tmp:
        src = release_source(settings, registry, name, version, rollback=False, workdir=Path(tmp))
        return api.publish(settings.state_dir, name, src.version, src.artifact, src.custom).release


def _status_text(d: dict[str, Any]) -> str:
    wave = "-" if d["wave"] is None else f"{d['wave']} of {len(d['waves'])} ({d['waves'][d['wave'] - 1]:.0%})"
    c = d["cohorts"]
    lines = [
        f"rollout {d['rollout_id']}: {d['model']} v{d['canary_version']} over v{d['production_version']}, "
        f"{d['phase']}, wave {wave}",
    ]
    if c.get("fleet"):
        lines.append(
            f"  cohorts: {c['canary']} canary ({c['canary_installed']} installed), {c['baseline']} baseline, "
            f"of {c['fleet']} vehicles; this wave drove {d['wave_km']:.1f} matched km"
        )
        if c["silent"]:
            lines.append(f"  silent (no believed heartbeat lately): {', '.join(c['silent'][:5])}")
    if d["refused"]:
        lines.append("  heartbeats refused: " + ", ".join(f"{k} {v}" for k, v in sorted(d["refused"].items())))
    last = d["last_verdict"]
    if last:
        lines.append(f"  last verdict (wave {last['wave']}): {last['verdict']}: {'; '.join(last['reasons'])}")
        lines += [f"    {e}" for e in last["decisive"]]
    if d["effects_pending"]:
        lines.append(f"  {d['effects_pending']} effect(s) still to carry out")
    return "\n".join(lines)


def wait_rollout(
    store: RolloutStore,
    rollout_id: str,
    timeout_s: float,
    on_progress: Callable[[str], None],
    poll_s: float = 1.0,
) -> RolloutRecord:
    """Wait until the rollout is promoted, rolled back or aborted and its effects are done; ``on_progress`` gets a
    line on where it stands at each look. ``ServiceUnavailable`` when it takes longer than ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            rec = store.load(rollout_id)
        except NotFoundError:
            rec = None
            why = store.refusal(rollout_id)
            if why is not None:
                raise ServiceUnavailable(
                    f"the rollout controller refused to start rollout {rollout_id}: {why}"
                ) from None
        if rec is not None:
            if rec.phase in _DONE and not rec.todo:
                return rec
            st = rec.controller
            if st is not None:
                on_progress(f"rollout {rollout_id}: {rec.phase}, wave {st.wave + 1}, {st.wave_km:.1f} matched km")
        if time.monotonic() > deadline:
            raise ServiceUnavailable(
                f"rollout {rollout_id} did not finish within {timeout_s:g} s; `fleetloop ota status` shows it"
            )
        time.sleep(poll_s)


def start_rollout(settings: Settings, name: str, version: int, policy: CanaryPolicy) -> dict[str, Any]:
    """What `ota rollout` does before it waits: refuse what cannot be rolled out (exit 2, before anything is
    signed), sign the version and production if never signed, ask the controller to start, start the controller
    if it is not running. Returns the rollout's identity and policy (the command's JSON form)."""
    registry = open_registry(settings)
    store = RolloutStore(settings.state_dir)
    production = check_rollout(store, registry, name, version)
    canary_release = _signed_release(settings, registry, name, str(version))
    _signed_release(settings, registry, name, str(production))  # a rollback re-signs it
    rollout_id = request_rollout(store, registry, name, version, canary_release, policy)
    launcher.up(settings, [ota_controller.SPEC])  # already running: nothing to do
    return {
        "rollout_id": rollout_id,
        "model": name,
        "canary_version": version,
        "production_version": production,
        "canary_release": canary_release,
        "policy": policy.to_dict(),
    }


@app.command(
    "rollout", help=f"Roll a staging version out to the fleet in judged waves. Policy defaults: {_POLICY_DEFAULTS}."
)
def rollout_cmd(
    name: str = typer.Argument(..., help="Registered model."),
    version: int = typer.Argument(..., click_type=POSITIVE_INT, help="A staging version."),
    policy: Path | None = typer.Option(None, "--policy", help="Rollout policy TOML (docs/canary.md)."),
    wait: bool = typer.Option(False, "--wait", help="Wait until it is promoted or rolled back."),
    wait_timeout_s: float = typer.Option(
        3600.0, "--wait-timeout-s", click_type=POSITIVE_FLOAT, help="Give up waiting after this long (seconds)."
    ),
    as_json: bool = _JSON,
) -> None:
    settings = load_settings()
    pol = load_policy(policy.read_text(), str(policy)) if policy is not None else CanaryPolicy()
    data = start_rollout(settings, name, version, pol)
    production = data["production_version"]
    if wait:
        with err_console.status(f"rollout {data['rollout_id']} ...") as spinner:
            rec = wait_rollout(RolloutStore(settings.state_dir), data["rollout_id"], wait_timeout_s, spinner.update)
        data["outcome"] = rec.phase
        data["history"] = history_view([rec])[0]

    def render(d: dict[str, Any]) -> None:
        console.print(
            f"rollout {d['rollout_id']}: {name} v{version} (release {d['canary_release']}) over v{production}, "
            f"waves {', '.join(f'{w:.0%}' for w in pol.waves)}",
            highlight=False,
        )
        if "outcome" in d:
            _print_history([d["history"]])
        else:
            console.print(
                "  the ota-controller judges it; `fleetloop ota status` shows where it stands", highlight=False
            )

    emit(data, as_json, render)


@app.command("status")
def status_cmd(name: str | None = typer.Argument(None, help="Model (default: all)."), as_json: bool = _JSON) -> None:
    """Where the running rollouts stand (or the last one): wave, cohorts, refusals, the last verdict."""
    settings = load_settings()
    store = RolloutStore(settings.state_dir)
    records = store.active(name) or store.records(name)[-1:]
    waiting = [
        store.current(name, r.rollout_id)
        for r in store.pending_starts()
        if name is None or r.start.get("model") == name
    ]
    fleet, now = store.load_fleet(), time.time()
    views = [status_view(r, cohort_summary(r, fleet, now, ControllerConfig.silent_after_s)) for r in records]
    views += [
        status_view(r, cohort_summary(r, fleet, now, ControllerConfig.silent_after_s))
        for r in waiting
        if r.rollout_id not in {v["rollout_id"] for v in views}
    ]

    def render(d: dict[str, Any]) -> None:
        if not d["rollouts"]:
            console.print("no rollout yet; `fleetloop ota rollout NAME VERSION` starts one", highlight=False)
        for v in d["rollouts"]:
            console.print(_status_text(v), highlight=False)

    emit({"rollouts": views}, as_json, render)


def _operator_cmd(command: str, name: str | None, rollout_id: str | None, reason: str, as_json: bool) -> None:
    settings = load_settings()
    store = RolloutStore(settings.state_dir)
    rec = store.current(name, rollout_id)
    if rec.phase in _DONE:
        raise BadReleaseInput(f"rollout {rec.rollout_id} is {rec.phase}; nothing to {command}")
    req = store.submit(command, rec.rollout_id, reason)
    data = {"rollout_id": rec.rollout_id, "command": command, "request_id": req.request_id, "reason": reason}
    _emit_text(
        data,
        as_json,
        lambda d: f"asked the ota-controller to {command} rollout {d['rollout_id']}; `fleetloop ota status` shows it",
    )


@app.command("pause")
def pause_cmd(
    name: str | None = typer.Argument(None),
    rollout: str | None = _ROLLOUT,
    reason: str = _REASON,
    as_json: bool = _JSON,
) -> None:
    """Stop deciding (heartbeats keep being counted); `ota resume` goes on."""
    _operator_cmd("pause", name, rollout, reason, as_json)


@app.command("resume")
def resume_cmd(
    name: str | None = typer.Argument(None),
    rollout: str | None = _ROLLOUT,
    reason: str = _REASON,
    as_json: bool = _JSON,
) -> None:
    """Resume a paused rollout."""
    _operator_cmd("resume", name, rollout, reason, as_json)


@app.command("abort")
def abort_cmd(
    name: str | None = typer.Argument(None),
    rollout: str | None = _ROLLOUT,
    reason: str = _REASON,
    as_json: bool = _JSON,
) -> None:
    """Stop without judging the model: vehicles back to production, the version back to staging."""
    _operator_cmd("abort", name, rollout, reason, as_json)


@app.command("rollback")
def rollback_cmd(
    name: str | None = typer.Argument(None),
    rollout: str | None = _ROLLOUT,
    reason: str = _REASON,
    as_json: bool = _JSON,
) -> None:
    """Roll back now: vehicles back to production (a re-signed release), the version rejected with the reason."""
    _operator_cmd("rollback", name, rollout, reason, as_json)


def _print_history(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        console.print(
            f"[bold]{r['rollout_id']}[/]: {r['model']} v{r['canary_version']} over v{r['production_version']}: "
            f"{r['phase']}",
            highlight=False,
        )
        for w in r["waves"]:
            console.print(
                f"  wave {w['wave']} ({w['fraction']:.0%}): {w['verdict']}: {'; '.join(w['reasons'])}", highlight=False
            )
            for e in w["decisive"]:
                console.print(f"    {e}", highlight=False)
        if r["refused"]:
            console.print(
                "  heartbeats refused: " + ", ".join(f"{k} {v}" for k, v in sorted(r["refused"].items())),
                highlight=False,
            )


@app.command("history")
def history_cmd(name: str | None = typer.Argument(None, help="Model (default: all)."), as_json: bool = _JSON) -> None:
    """Every rollout with its verdict per wave and the evidence (slice, metric, counts, exposure)."""
    settings = load_settings()
    rows = history_view(RolloutStore(settings.state_dir).records(name))

    def render(d: dict[str, Any]) -> None:
        if not d["rollouts"]:
            console.print("no rollouts yet", highlight=False)
        _print_history(d["rollouts"])

    emit({"rollouts": rows}, as_json, render)
