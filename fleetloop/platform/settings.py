"""Typed settings, validated once.

Sources, highest priority first:
1. ``FLEETLOOP_*`` environment variables (``FLEETLOOP_STATE_DIR``, ``FLEETLOOP_KAFKA_PORT``, ...);
2. the standard variables of the libraries we use (``MLFLOW_TRACKING_URI``, ``KAFKA_BOOTSTRAP_SERVERS``);
3. a TOML config file: ``$FLEETLOOP_CONFIG``, else ``fleetloop.toml`` in the working directory, else
   ``<state_dir>/config.toml``; keys are the field names below (``kafka_port = 19092``);
4. the defaults, which run everything on one machine on loopback ports.

A pointer to an existing service (``kafka_bootstrap`` / ``mlflow_tracking_uri`` / ``prometheus_url`` /
``alertmanager_url``) makes ``fleetloop up`` start nothing for that service.
"""

from __future__ import annotations

import math
import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from fleetloop.platform.errors import ConfigError

__all__ = ["PHONE_HOME_OFF", "Settings", "child_env", "load_settings"]

ENV_PREFIX = "FLEETLOOP_"

# Every process the platform starts gets these: the libraries' usage reporting stays off.
PHONE_HOME_OFF: dict[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DO_NOT_TRACK": "1",
}


# What a URL setting points at, for its error message.
_SERVER_EXAMPLES = {
    "mlflow_tracking_uri": "an MLflow server (e.g. http://127.0.0.1:5000)",
    "prometheus_url": "a Prometheus server (e.g. http://127.0.0.1:9090)",
    "alertmanager_url": "an Alertmanager (e.g. http://127.0.0.1:9093)",
}


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fleetloop"


class Settings(BaseModel):
    """Platform settings. Every field can be set as ``FLEETLOOP_<FIELD>`` or in the config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="Where services keep data, logs, pids, metrics targets and run records.",
    )
    host: str = Field("127.0.0.1", description="Address every server binds; loopback only by default.")
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: JSON lines with correlation ids on stderr (`fleetloop --log-format`)."
    )
    # Kafka
    kafka_bootstrap: str | None = Field(
        None, description="An existing Kafka cluster (host:port,...); when set, `up` starts no broker."
    )
    kafka_port: int = Field(19092, description="Port of the local broker's client listener.")
    kafka_controller_port: int = Field(19093, description="Port of the local KRaft controller listener.")
    kafka_heap_mb: int = Field(512, description="JVM heap of the local broker, in MiB.")
    kafka_partitions: int = Field(4, description="Default partitions per topic created by the admin step.")
    kafka_libs_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "fleetloop" / "kafka-libs",
        description="Directory holding the broker's jars (filled by `make kafka-jars`).",
    )
    java: str = Field("java", description="The Java 17+ executable that runs the broker.")
    # MLflow
    mlflow_tracking_uri: str | None = Field(
        None, description="An existing MLflow server; when set, `up` starts no tracking server."
    )
    mlflow_port: int = Field(15000, description="Port of the local MLflow tracking server.")
    model_name: str = Field("fleet-policy", description="Registered model name of the fleet policy.")
    mlflow_retry_s: float = Field(
        30.0,
        description="How long one MLflow call keeps retrying a server that does not answer, in total, before the "
        "command fails (exit 4) [s]; 0: try once.",
    )
    # Signed releases
    ota_repo_port: int = Field(
        18765, description="Port of the local signed-release (TUF) server that vehicles fetch models from."
    )
    # Federated rounds on Flower's deployment engine (`fleetloop fl serve`)
    flower_port: int = Field(
        19094, description="Port of the local Flower SuperLink (Fleet, Control and ServerAppIo APIs, plain HTTP)."
    )
    # Prometheus and Alertmanager (optional: `make prometheus` installs them; `up` runs the stack without them)
    prometheus_url: str | None = Field(
        None, description="An existing Prometheus server (http://host:port); when set, `up` starts none."
    )
    prometheus_port: int = Field(19090, description="Port of the local Prometheus server.")
    prometheus_executable: str = Field("prometheus", description="The Prometheus 2.x server executable.")
    prometheus_scrape_interval_s: float = Field(
        15.0, description="How often the local Prometheus scrapes every target and evaluates the alert rules [s]."
    )
    prometheus_retention_h: float = Field(48.0, description="The local Prometheus keeps this many hours of series.")
    prometheus_retention_mb: int = Field(
        512, description="Disk cap of the local Prometheus' series, in MB (the oldest go first)."
    )
    prometheus_rules_dir: Path | None = Field(
        None, description="Alert rule files (*.yml) the local Prometheus loads (unset: deploy/prometheus/rules)."
    )
    alertmanager_url: str | None = Field(
        None, description="An existing Alertmanager (http://host:port) for Prometheus' alerts; `up` starts none."
    )
    alertmanager_port: int = Field(19091, description="Port of the local Alertmanager.")
    alertmanager_executable: str | None = Field(
        None, description="The Alertmanager executable (unset: prometheus-alertmanager, else alertmanager)."
    )
    # Lake
    lake_max_age_h: float | None = Field(
        None, description="Retention: delete lake partitions older than this many hours (unset: keep all)."
    )
    lake_max_bytes: int | None = Field(
        None, description="Retention: delete the oldest lake partitions beyond this many bytes (unset: no cap)."
    )
    # Timeouts
    startup_timeout_s: float = Field(90.0, description="How long `up` waits for a service to become healthy.")
    stop_timeout_s: float = Field(20.0, description="How long `down` waits after SIGTERM before SIGKILL.")

    @field_validator(
        "kafka_port",
        "kafka_controller_port",
        "mlflow_port",
        "ota_repo_port",
        "prometheus_port",
        "alertmanager_port",
        "flower_port",
    )
    @classmethod
    def _port_in_range(cls, v: int) -> int:
        if not 1024 <= v <= 65535:
            raise ValueError(f"port {v} is outside 1024-65535; choose an unprivileged port")
        return v

    @field_validator("kafka_heap_mb")
    @classmethod
    def _heap(cls, v: int) -> int:
        if v < 128:
            raise ValueError(f"{v} MiB is too small for a Kafka broker; use at least 128")
        return v

    @field_validator("kafka_partitions")
    @classmethod
    def _partitions(cls, v: int) -> int:
        if v < 1:
            raise ValueError("a topic needs at least 1 partition")
        return v

    @field_validator("mlflow_retry_s")
    @classmethod
    def _retry(cls, v: float) -> float:
        if not 0 <= v <= 3600:
            raise ValueError(f"{v} s is outside 0-3600; a few tens of seconds ride out a server restart")
        return v

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        for part in v.split(","):
            host, sep, port = part.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{part!r} is not host:port (e.g. 127.0.0.1:9092)")
        return v

    @field_validator("mlflow_tracking_uri", "prometheus_url", "alertmanager_url")
    @classmethod
    def _server_url(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http(s) URL of {_SERVER_EXAMPLES[info.field_name or '']}")
        return v.rstrip("/")

    @field_validator("prometheus_scrape_interval_s", "prometheus_retention_h")
    @classmethod
    def _positive_duration(cls, v: float) -> float:
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"{v} is not a positive, finite duration")
        return v

    @field_validator("prometheus_retention_mb")
    @classmethod
    def _retention_size(cls, v: int) -> int:
        if v < 16:
            raise ValueError(f"{v} MB holds almost no series; keep at least 16")
        return v

    # -- derived -----------------------------------------------------------------------------

    @property
    def kafka_external(self) -> bool:
        return self.kafka_bootstrap is not None

    @property
    def mlflow_external(self) -> bool:
        return self.mlflow_tracking_uri is not None

    @property
    def prometheus_external(self) -> bool:
        return self.prometheus_url is not None

    @property
    def alertmanager_external(self) -> bool:
        return self.alertmanager_url is not None

    @property
    def prometheus_uri(self) -> str:
        """Where Prometheus answers: ``prometheus_url``, or the local server."""
        return self.prometheus_url or f"http://{self.host}:{self.prometheus_port}"

    @property
    def alertmanager_uri(self) -> str:
        """Where Alertmanager answers: ``alertmanager_url``, or the local one."""
        return self.alertmanager_url or f"http://{self.host}:{self.alertmanager_port}"

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap or f"{self.host}:{self.kafka_port}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.host}:{self.mlflow_port}"

    def public_dict(self) -> dict[str, Any]:
        """Settings with the derived addresses, as `fleetloop config show` prints them."""
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.model_dump().items()}
        out["bootstrap_servers"] = self.bootstrap_servers
        out["tracking_uri"] = self.tracking_uri
        out["prometheus_uri"] = self.prometheus_uri
        out["alertmanager_uri"] = self.alertmanager_uri
        return out


def _config_file(env: dict[str, str]) -> Path | None:
    explicit = env.get(ENV_PREFIX + "CONFIG")
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ConfigError(f"FLEETLOOP_CONFIG points at {p}, which is not a file; fix the path or unset it")
        return p
    local = Path.cwd() / "fleetloop.toml"
    if local.is_file():
        return local
    state = Path(env.get(ENV_PREFIX + "STATE_DIR") or _default_state_dir()).expanduser()
    cand = state / "config.toml"
    return cand if cand.is_file() else None


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build and validate settings from a config file and the environment (``os.environ`` by default)."""
    env = dict(os.environ if env is None else env)
    raw: dict[str, Any] = {}
    source: dict[str, str] = {}
    path = _config_file(env)
    if path is not None:
        try:
            raw.update(tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}; fix the file") from e
        for k in raw:
            source[k] = f"config file {path}"
    # Standard variables of the libraries, below our own prefix.
    if env.get("MLFLOW_TRACKING_URI"):
        raw["mlflow_tracking_uri"] = env["MLFLOW_TRACKING_URI"]
        source["mlflow_tracking_uri"] = "MLFLOW_TRACKING_URI"
    if env.get("KAFKA_BOOTSTRAP_SERVERS"):
        raw["kafka_bootstrap"] = env["KAFKA_BOOTSTRAP_SERVERS"]
        source["kafka_bootstrap"] = "KAFKA_BOOTSTRAP_SERVERS"
    known = set(Settings.model_fields)
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        field = key[len(ENV_PREFIX) :].lower()
        if field not in known:
            raise ConfigError(
                f"unknown setting {key}; known settings are "
                + ", ".join(ENV_PREFIX + f.upper() for f in sorted(known))
                + " (unset it or fix the spelling)"
            )
        raw[field] = value
        source[field] = key
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown keys {sorted(unknown)} in config file {path}; remove them or fix the spelling")
    try:
        return Settings(**raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            where = source.get(field, "default")
            lines.append(f"  {field} (from {where}): {err['msg']}")
        raise ConfigError("invalid settings:\n" + "\n".join(lines)) from e


@lru_cache(maxsize=1)
def cached_settings() -> Settings:
    return load_settings()


def child_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process: ours, the phone-home switches, and the resolved addresses."""
    env = dict(os.environ)
    env.update(PHONE_HOME_OFF)
    env["FLEETLOOP_STATE_DIR"] = str(settings.state_dir)
    if extra:
        env.update(extra)
    return env
