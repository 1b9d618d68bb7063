"""Prometheus and Alertmanager as optional services: a machine without them runs the rest of the stack and says
how to install them; the rendered configuration points at the right targets, rules and Alertmanager."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from fleetloop.cli.services import NOT_INSTALLED, not_installed, services_to_start
from fleetloop.platform.errors import ConfigError, SetupError
from fleetloop.platform.services import alertmanager, prometheus
from fleetloop.platform.settings import Settings, load_settings

with warnings.catch_warnings():
    # typer 0.20 imports a helper that click 8.5 deprecates; the warning is theirs, not ours.
    warnings.simplefilter("ignore", DeprecationWarning)
    from typer.testing import CliRunner

    from fleetloop.cli.main import app

ABSENT = {"prometheus_executable": "no-prometheus-here", "alertmanager_executable": "no-alertmanager-here"}


def test_a_machine_without_prometheus_leaves_it_out_of_a_plain_up_and_says_how_to_install_it(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, **ABSENT)
    assert [s.name for s in services_to_start(settings=settings)] == ["kafka", "mlflow", "ota-repo"]
    status = not_installed(settings, prometheus.SPEC)
    assert status is not None and status.state == NOT_INSTALLED and not status.required
    assert "no `no-prometheus-here` on PATH" in status.detail and "make prometheus" in status.detail
    am = not_installed(settings, alertmanager.SPEC)
    assert am is not None and "apt-get install --no-install-recommends" in am.detail


def test_asking_for_a_missing_prometheus_by_name_is_a_setup_error(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, **ABSENT)
    assert prometheus.SPEC.prepare is not None
    with pytest.raises(SetupError, match=r"prometheus: not installed.*make prometheus"):
        prometheus.SPEC.prepare(settings, tmp_path)


def test_an_external_prometheus_is_never_missing(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, prometheus_url="http://10.0.0.5:9090/", **ABSENT)
    assert prometheus.missing(settings) is None and prometheus.SPEC.is_external(settings)
    assert prometheus.SPEC.address(settings) == "http://10.0.0.5:9090"


def test_status_reports_a_missing_prometheus_without_counting_it_against_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray fleetloop.toml from the working directory
    env = {
        "FLEETLOOP_STATE_DIR": str(tmp_path),
        "FLEETLOOP_PROMETHEUS_EXECUTABLE": "no-prometheus-here",
        "FLEETLOOP_ALERTMANAGER_EXECUTABLE": "no-alertmanager-here",
        "COLUMNS": "200",
    }
    result = CliRunner().invoke(app, ["status", "--json"], env=env)
    data = json.loads(result.stdout)
    rows = {s["name"]: s for s in data["services"]}
    assert rows["prometheus"]["state"] == rows["alertmanager"]["state"] == NOT_INSTALLED
    assert result.exit_code == 4  # Kafka and MLflow are not running: that, not Prometheus, is what fails
    assert {s["state"] for s in data["services"] if s["required"]} == {"stopped"}


def test_the_configuration_scrapes_the_state_directory_and_loads_the_rules(tmp_path: Path) -> None:
    rules = tmp_path / "my-rules"
    settings = Settings(state_dir=tmp_path / "state", prometheus_port=29090, prometheus_rules_dir=rules)
    config = yaml.safe_load(prometheus.render_config(settings))
    assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "15s"
    assert config["rule_files"] == [str(rules.resolve() / "*.yml")]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["fleetloop"]["file_sd_configs"] == [
        {"files": [str((tmp_path / "state").resolve() / "metrics" / "targets" / "*.json")]}
    ]
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:29090"]}]


def test_alerts_go_to_the_local_alertmanager_an_external_one_or_nowhere(tmp_path: Path) -> None:
    def alerting(**kw: object) -> dict[str, object]:
        config = yaml.safe_load(prometheus.render_config(Settings(state_dir=tmp_path, **kw)))  # type: ignore[arg-type]
        (am,) = config["alerting"]["alertmanagers"]
        return {"scheme": am["scheme"], "targets": am["static_configs"][0]["targets"]}

    local = alerting(alertmanager_port=29091, alertmanager_executable="sh")  # any executable that exists
    assert local == {"scheme": "http", "targets": ["127.0.0.1:29091"]}
    assert alerting(alertmanager_url="https://alerts.example:9443") == {
        "scheme": "https",
        "targets": ["alerts.example:9443"],
    }
    assert alerting(alertmanager_executable="no-alertmanager-here") == {"scheme": "http", "targets": []}
    with pytest.raises(SetupError, match="root URL"):
        alerting(alertmanager_url="http://alerts.example:9093/am")


def test_rule_files_folder_without_rules_is_refused_before_start(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, prometheus_rules_dir=tmp_path / "empty", prometheus_executable="sh")
    assert prometheus.SPEC.prepare is not None
    with pytest.raises(SetupError, match=r"no alert rule files.*FLEETLOOP_PROMETHEUS_RULES_DIR"):
        prometheus.SPEC.prepare(settings, tmp_path)


def test_command_binds_loopback_with_a_laptop_sized_retention(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, prometheus_port=29090, prometheus_retention_h=2, prometheus_retention_mb=64)
    cmd = prometheus.SPEC.command(settings, tmp_path)
    assert "--web.listen-address=127.0.0.1:29090" in cmd
    assert "--storage.tsdb.retention.time=7200s" in cmd and "--storage.tsdb.retention.size=64MB" in cmd
    am = alertmanager.SPEC.command(settings.model_copy(update={"alertmanager_port": 29091}), tmp_path)
    assert "--web.listen-address=127.0.0.1:29091" in am and "--cluster.listen-address=" in am


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"FLEETLOOP_PROMETHEUS_URL": "127.0.0.1:9090"}, "prometheus_url .*not an http"),
        ({"FLEETLOOP_PROMETHEUS_PORT": "80"}, "prometheus_port .*unprivileged"),
        ({"FLEETLOOP_PROMETHEUS_SCRAPE_INTERVAL_S": "0"}, "prometheus_scrape_interval_s .*positive"),
        ({"FLEETLOOP_PROMETHEUS_RETENTION_MB": "1"}, "prometheus_retention_mb .*at least 16"),
    ],
)
def test_bad_prometheus_settings_name_the_setting_and_the_fix(tmp_path: Path, env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_settings({"FLEETLOOP_STATE_DIR": str(tmp_path), **env})


def test_sub_second_intervals_render_in_milliseconds(tmp_path: Path) -> None:
    config = yaml.safe_load(prometheus.render_config(Settings(state_dir=tmp_path, prometheus_scrape_interval_s=0.25)))
    assert config["global"]["scrape_interval"] == "250ms"
