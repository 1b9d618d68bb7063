"""What ``fleetloop watch`` shows, read from Prometheus' HTTP API or straight from the exporters.

Two layers:

- a pure part: :func:`build_snapshot` turns samples (``name``, labels, value), the scrape targets' health and the
  firing alerts into a :class:`Snapshot` (fleet throughput, safety rates per model version and condition, the
  arbiter's fallback reasons, the pipeline's records, dead letters, lag and last verdicts, rollout waves); the
  ``*_from_api`` functions read Prometheus' API documents;
- the I/O: :func:`scrape_exporters` reads every ``file_sd`` target's ``/metrics`` (no Prometheus needed; a target
  that does not answer is listed as down), :func:`query_prometheus` asks a Prometheus server, and
  :class:`Watcher` picks one per poll: Prometheus while it answers, else the exporters, so a restarted Prometheus
  is picked up again at the next poll. :func:`query_history` reads the plotted series (Prometheus only).

Rates are cumulative over what the live processes have counted (a process's counters start with it); the
Grafana dashboard shows the same series as windowed rates.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from prometheus_client.parser import text_string_to_metric_families

from fleetloop.platform.errors import ServiceUnavailable, SetupError
from fleetloop.platform.metrics.targets import Target, list_targets
from fleetloop.platform.settings import Settings

__all__ = [
    "COLLISION_RATE_BY_MODEL_VERSION",
    "HISTORY_QUERIES",
    "WATCHED_METRICS",
    "Alert",
    "History",
    "SafetyRate",
    "Sample",
    "Snapshot",
    "SourceName",
    "TargetHealth",
    "Verdict",
    "Watcher",
    "alerts_from_api",
    "build_snapshot",
    "parse_exposition",
    "query_history",
    "query_prometheus",
    "samples_from_vector",
    "scrape_exporters",
    "targets_from_api",
]

SourceName = Literal["auto", "prometheus", "exporters"]

STEPS_PER_S = "fleetloop_sim_vehicle_steps_per_second"
STEPS = "fleetloop_sim_vehicle_steps_total"
DISTANCE = "fleetloop_sim_distance_meters_total"
CONDITION_EVENTS = "fleetloop_sim_condition_events_total"
REASON_ACTIVATIONS = "fleetloop_sim_fallback_reason_activations_total"
ROWS = "fleetloop_pipeline_rows_collected_total"
DEAD_LETTERS = "fleetloop_pipeline_dead_lettered_total"
LAG = "fleetloop_pipeline_consumer_lag_records"
VERDICTS = "fleetloop_pipeline_validation_verdict_timestamp_seconds"
ROLLOUT_WAVE = "fleetloop_rollout_wave"

WATCHED_METRICS = (
    STEPS_PER_S,
    STEPS,
    DISTANCE,
    CONDITION_EVENTS,
    REASON_ACTIVATIONS,
    ROWS,
    DEAD_LETTERS,
    LAG,
    VERDICTS,
    ROLLOUT_WAVE,
)
"""Every metric the snapshot reads; tests check that the platform registers each of them."""

SAFETY_EVENTS = ("collision", "near_miss")
LAST_VERDICTS = 5  # the snapshot lists this many verdicts, newest first
_TIMEOUT_S = 2.0  # [s] per HTTP request; loopback servers answer in milliseconds


# -- the snapshot (pure) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One series' current value."""

    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class TargetHealth:
    """A scrape target: up (it answered) or down, with why."""

    process: str
    instance: str
    pid: str | None
    up: bool
    error: str | None = None


@dataclass(frozen=True)
class Alert:
    """An alert Prometheus evaluates as pending or firing."""

    name: str
    state: str
    severity: str
    summary: str
    labels: Mapping[str, str]
    active_since: str | None


@dataclass(frozen=True)
class SafetyRate:
    """Collisions and near misses of one model version in one condition, per 1,000 km driven."""

    model_version: str
    condition: str
    km: float
    collisions: int
    near_misses: int
    per_1000_km: float | None  # None before any distance is driven


@dataclass(frozen=True)
class Verdict:
    """A validation verdict: ``passed`` or ``rejected``, at Unix time ``at_s``."""

    model: str
    version: str
    verdict: str
    at_s: float


@dataclass(frozen=True)
class Snapshot:
    """Everything ``fleetloop watch`` shows at one moment; ``to_dict()`` is its ``--json`` document."""

    taken_at_s: float
    source: str  # "prometheus" or "exporters"
    source_url: str  # the Prometheus URL, or the targets folder
    source_note: str | None  # why the source is not the one asked for (Prometheus down: exporters read instead)
    vehicle_steps_per_s: float
    vehicle_steps: float
    safety: list[SafetyRate]
    fallback_reasons: dict[str, float]
    pipeline_records: dict[str, float]  # lake table -> rows collected
    dead_letters: dict[str, float]  # "table/reason" -> records dead-lettered
    consumer_lag: dict[str, float]  # "stage/topic" -> records behind
    verdicts: list[Verdict]
    rollout_waves: dict[str, float]  # "model/version" -> wave
    targets: list[TargetHealth]
    alerts: list[Alert] | None  # None: not known (no Prometheus evaluates the rules)
    unreadable_targets: list[str] = field(default_factory=list)

    @property
    def targets_down(self) -> list[TargetHealth]:
        return [t for t in self.targets if not t.up]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; a rate without exposure is ``null``."""
        return asdict(self)


def _sum_by(samples: Iterable[Sample], name: str, *keys: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for s in samples:
        if s.name != name:
            continue
        key = tuple(s.labels.get(k, "") for k in keys)
        out[key] = out.get(key, 0.0) + s.value
    return out


def _joined(sums: Mapping[tuple[str, ...], float]) -> dict[str, float]:
    return {"/".join(k): v for k, v in sorted(sums.items())}


def build_snapshot(
    samples: Sequence[Sample],
    targets: Sequence[TargetHealth],
    alerts: Sequence[Alert] | None,
    *,
    source: str,
    source_url: str,
    source_note: str | None = None,
    taken_at_s: float,
    unreadable_targets: Sequence[str] = (),
) -> Snapshot:
    """The snapshot of these samples (summed over the processes that export them). Pure."""
    finite = [s for s in samples if math.isfinite(s.value)]
    distance = _sum_by(finite, DISTANCE, "model_version", "condition")
    events = _sum_by(finite, CONDITION_EVENTS, "model_version", "condition", "event")
    safety = []
    for (version, condition), meters in sorted(distance.items()):
        collisions = round(events.get((version, condition, "collision"), 0.0))
        near = round(events.get((version, condition, "near_miss"), 0.0))
        km = meters / 1000.0
        per = (collisions + near) / km * 1000.0 if km > 0 else None
        safety.append(SafetyRate(version, condition, km, collisions, near, per))
    verdicts = [
        Verdict(model, version, verdict, at_s)
        for (model, version, verdict), at_s in _sum_by(finite, VERDICTS, "model", "version", "verdict").items()
    ]
    verdicts.sort(key=lambda v: v.at_s, reverse=True)
    return Snapshot(
        taken_at_s=taken_at_s,
        source=source,
        source_url=source_url,
        source_note=source_note,
        vehicle_steps_per_s=float(sum(_sum_by(finite, STEPS_PER_S).values())),
        vehicle_steps=float(sum(_sum_by(finite, STEPS).values())),
        safety=safety,
        fallback_reasons={k[0]: v for k, v in sorted(_sum_by(finite, REASON_ACTIVATIONS, "reason").items())},
        pipeline_records=_joined(_sum_by(finite, ROWS, "table")),
        dead_letters=_joined(_sum_by(finite, DEAD_LETTERS, "table", "reason")),
        consumer_lag=_joined(_sum_by(finite, LAG, "stage", "topic")),
        verdicts=verdicts[:LAST_VERDICTS],
        rollout_waves=_joined(_sum_by(finite, ROLLOUT_WAVE, "model", "version")),
        targets=sorted(targets, key=lambda t: (t.process, t.pid or "", t.instance)),
        alerts=None if alerts is None else list(alerts),
        unreadable_targets=list(unreadable_targets),
    )


# -- Prometheus API documents (pure) --------------------------------------------------------------------


def _data(doc: Any, what: str) -> Any:
    if not isinstance(doc, dict) or doc.get("status") != "success" or "data" not in doc:
        error = doc.get("error") if isinstance(doc, dict) else None
        raise ValueError(f"Prometheus answered {what} without data: {error or str(doc)[:200]}")
    return doc["data"]


def samples_from_vector(doc: Any) -> list[Sample]:
    """The samples of an instant query's answer (``/api/v1/query``, a vector)."""
    data = _data(doc, "the query")
    if data.get("resultType") != "vector":
        raise ValueError(f"expected an instant vector, got {data.get('resultType')!r}")
    out = []
    for series in data["result"]:
        labels = dict(series["metric"])
        out.append(Sample(labels.pop("__name__", ""), labels, float(series["value"][1])))
    return out


def targets_from_api(doc: Any, job: str = "fleetloop") -> list[TargetHealth]:
    """The health of ``job``'s targets from ``/api/v1/targets`` (``unknown``, not yet scraped, counts as down)."""
    out = []
    for t in _data(doc, "the targets")["activeTargets"]:
        labels = t.get("labels", {})
        if t.get("scrapePool", labels.get("job")) != job:
            continue
        up = t.get("health") == "up"
        error = None if up else (t.get("lastError") or f"health {t.get('health', 'unknown')}")
        out.append(TargetHealth(labels.get("process", "?"), labels.get("instance", "?"), labels.get("pid"), up, error))
    return out


def alerts_from_api(doc: Any) -> list[Alert]:
    """Pending and firing alerts from ``/api/v1/alerts``, firing first."""
    out = []
    for a in _data(doc, "the alerts")["alerts"]:
        labels = dict(a.get("labels", {}))
        out.append(
            Alert(
                name=labels.get("alertname", "?"),
                state=a.get("state", "?"),
                severity=labels.get("severity", ""),
                summary=" ".join(str(a.get("annotations", {}).get("summary", "")).split()),
                labels=labels,
                active_since=a.get("activeAt"),
            )
        )
    out.sort(key=lambda a: (a.state != "firing", a.name))
    return out


def parse_exposition(text: str) -> list[Sample]:
    """The samples of a ``/metrics`` page in the Prometheus text format, ``fleetloop_*`` series only."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("fleetloop_") and not s.name.endswith("_created"):
                out.append(Sample(s.name, dict(s.labels), float(s.value)))
    return out


# -- I/O ------------------------------------------------------------------------------------------------


def _get(url: str, timeout_s: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        body: bytes = r.read()
        return body


def _why(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return str(e.reason)
    return str(e) or type(e).__name__


def _scrape(target: Target, timeout_s: float) -> tuple[TargetHealth, list[Sample]]:
    base = TargetHealth(target.name, target.address, str(target.pid) if target.pid else None, True)
    if target.alive is False:
        why = f"process {target.pid} has exited without removing its target file (`fleetloop status` prunes it)"
        return TargetHealth(base.process, base.instance, base.pid, False, why), []
    try:
        text = _get(f"http://{target.address}/metrics", timeout_s).decode("utf-8")
        samples = parse_exposition(text)
    except (OSError, ValueError) as e:  # refused, reset, timed out, or not an exposition
        return TargetHealth(base.process, base.instance, base.pid, False, _why(e)), []
    # Label the samples with the target's labels, as Prometheus does (target labels win over the process's).
    extra = {k: v for k, v in target.labels.items() if k in ("process", "pid", "stage")}
    return base, [Sample(s.name, {**s.labels, **extra}, s.value) for s in samples]


def scrape_exporters(
    state_dir: Path, timeout_s: float = _TIMEOUT_S
) -> tuple[list[Sample], list[TargetHealth], list[str]]:
    """Scrape every registered target in parallel: (samples, target health, unreadable target files with why).

    A target that refuses, hangs past ``timeout_s`` or answers garbage is down; the others are read regardless.
    """
    listing = list_targets(state_dir)
    samples: list[Sample] = []
    health: list[TargetHealth] = []
    if listing.targets:
        with ThreadPoolExecutor(max_workers=min(16, len(listing.targets))) as pool:
            for h, s in pool.map(lambda t: _scrape(t, timeout_s), listing.targets):
                health.append(h)
                samples.extend(s)
    unreadable = [f"{path.name}: {why}" for path, why in listing.unreadable]
    return samples, health, unreadable


def _api(base_url: str, path: str, timeout_s: float, **params: str) -> Any:
    url = base_url.rstrip("/") + path + ("?" + urllib.parse.urlencode(params) if params else "")
    return json.loads(_get(url, timeout_s))


def _selector(names: Iterable[str]) -> str:
    return '{__name__=~"' + "|".join(names) + '"}'


def query_prometheus(
    base_url: str, timeout_s: float = _TIMEOUT_S
) -> tuple[list[Sample], list[TargetHealth], list[Alert]]:
    """The watched series, the fleetloop targets' health and the alerts, from a Prometheus server.

    Raises ``ServiceUnavailable`` when it does not answer or answers something that is not its API.
    """
    try:
        samples = samples_from_vector(_api(base_url, "/api/v1/query", timeout_s, query=_selector(WATCHED_METRICS)))
        targets = targets_from_api(_api(base_url, "/api/v1/targets", timeout_s, state="active"))
        alerts = alerts_from_api(_api(base_url, "/api/v1/alerts", timeout_s))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ServiceUnavailable(f"Prometheus at {base_url} does not answer its API: {_why(e)}") from e
    return samples, targets, alerts


class Watcher:
    """Takes snapshots from ``source``: ``prometheus``, ``exporters``, or ``auto`` (Prometheus while it answers,
    else the exporters, asking Prometheus again at every poll, so a restarted server is picked up)."""

    def __init__(self, settings: Settings, source: SourceName = "auto", timeout_s: float = _TIMEOUT_S) -> None:
        if source not in ("auto", "prometheus", "exporters"):
            raise ValueError(f"unknown source {source!r}; use auto, prometheus or exporters")
        self.settings = settings
        self.source = source
        self.timeout_s = timeout_s

    @property
    def prometheus_url(self) -> str:
        return self.settings.prometheus_uri

    def poll(self) -> Snapshot:
        """One snapshot. With ``prometheus`` a server that does not answer raises ``ServiceUnavailable``."""
        now = time.time()
        note = None
        if self.source != "exporters":
            try:
                samples, targets, alerts = query_prometheus(self.prometheus_url, self.timeout_s)
                return build_snapshot(
                    samples, targets, alerts, source="prometheus", source_url=self.prometheus_url, taken_at_s=now
                )
            except ServiceUnavailable as e:
                if self.source == "prometheus":
                    raise
                note = f"{e}; reading the exporters directly (alerts unknown), asking Prometheus again next refresh"
        samples, targets, unreadable = scrape_exporters(self.settings.state_dir, self.timeout_s)
        folder = str(Path(self.settings.state_dir) / "metrics" / "targets")
        return build_snapshot(
            samples,
            targets,
            None,
            source="exporters",
            source_url=folder,
            source_note=note,
            taken_at_s=now,
            unreadable_targets=unreadable,
        )


# -- history, for the plot (Prometheus only) ----------------------------------------------------------------

# title -> (PromQL with {w} for the rate window, the label naming each line, unit)
HISTORY_QUERIES: dict[str, tuple[str, str, str]] = {
    "fleet throughput": (f"sum(rate({STEPS}[{{w}}]))", "", "vehicle-steps / s"),
    "collisions + near misses per 1,000 km": (
        f'sum by (model_version, condition) (increase({CONDITION_EVENTS}{{{{event=~"collision|near_miss"}}}}[{{ws}}]))'
        f" / (sum by (model_version, condition) (increase({DISTANCE}[{{ws}}])) > 0) * 1e6",
        "model_version,condition",
        "per 1,000 km",
    ),
    "fallback activations by reason": (
        f"sum by (reason) (rate({REASON_ACTIVATIONS}[{{w}}]))",
        "reason",
        "per s",
    ),
    "pipeline": (
        f'label_replace(sum(rate({ROWS}[{{w}}])), "series", "rows collected", "", "")'
        f' or label_replace(sum(rate({DEAD_LETTERS}[{{w}}])), "series", "dead letters", "", "")',
        "series",
        "records / s",
    ),
}
"""The plotted panels: their PromQL (``{w}``: the rate window; ``{ws}``: the safety rate's, a fifth of the plotted
span, since events are rare), the label that names a line, the unit."""

COLLISION_RATE_BY_MODEL_VERSION = (
    f'(sum by (model_version) (increase({CONDITION_EVENTS}{{event="collision"}}[10m]))'
    f" or 0 * sum by (model_version) (increase({DISTANCE}[10m])))"
    f" / (sum by (model_version) (increase({DISTANCE}[10m])) > 0) * 1e6"
)
"""The fleet's collisions per 1,000 km by model version over the last 10 minutes, for Prometheus' UI or API (the
README and docs/observability.md quote it): a version that drove without a collision has no collision series yet,
so its rate is 0 from the distance term, not missing; a version that drove no distance has no rate."""


@dataclass(frozen=True)
class History:
    """Each plotted panel's lines: title -> line name -> [(Unix time [s], value)]."""

    start_s: float
    end_s: float
    panels: dict[str, dict[str, list[tuple[float, float]]]]
    window_s: float = 0.0  # [s] of the rates
    safety_window_s: float = 0.0  # [s] of the safety rate

    @property
    def empty(self) -> bool:
        return not any(lines for lines in self.panels.values())


def _lines(doc: Any, label_keys: str) -> dict[str, list[tuple[float, float]]]:
    data = _data(doc, "the range query")
    out: dict[str, list[tuple[float, float]]] = {}
    for series in data["result"]:
        m = series["metric"]
        name = "/".join(m.get(k, "") for k in label_keys.split(",") if k) or "total"
        out[name] = [(float(t), float(v)) for t, v in series["values"] if math.isfinite(float(v))]
    return out


def query_history(settings: Settings, minutes: float, *, end_s: float | None = None) -> History:
    """The last ``minutes`` of the plotted series from Prometheus (``query_range``).

    Raises ``SetupError`` when no Prometheus answers: the exporters keep no history.
    """
    base = settings.prometheus_uri
    end = time.time() if end_s is None else end_s
    start = end - minutes * 60.0
    step_s = max(1.0, minutes * 60.0 / 240)  # about 240 points a line
    window_s = max(4 * settings.prometheus_scrape_interval_s, 2 * step_s)  # at least a few scrapes per rate
    safety_window_s = max(window_s, minutes * 60.0 / 5)
    panels = {}
    try:
        for title, (promql, label_keys, _unit) in HISTORY_QUERIES.items():
            doc = _api(
                base,
                "/api/v1/query_range",
                _TIMEOUT_S * 5,
                query=promql.format(w=f"{round(window_s)}s", ws=f"{round(safety_window_s)}s"),
                start=f"{start:.3f}",
                end=f"{end:.3f}",
                step=f"{step_s:.3f}",
            )
            panels[title] = _lines(doc, label_keys)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SetupError(
            f"a plot needs Prometheus' history, and Prometheus at {base} does not answer ({_why(e)}); start it with "
            "`fleetloop up prometheus` (install it with `make prometheus`) or point FLEETLOOP_PROMETHEUS_URL at one, "
            "then let it scrape a run"
        ) from e
    return History(start, end, panels, window_s, safety_window_s)
