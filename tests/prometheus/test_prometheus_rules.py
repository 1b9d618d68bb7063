"""The alert rules of deploy/prometheus: valid for the Prometheus we install, each one unit-tested by promtool
against series that must make it fire (and series that must not), and querying only metrics the platform
registers, so a renamed metric cannot silently disarm a rule."""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

# The modules that declare, at import, the metrics the rules query.
import fleetloop.pipelines.collect
import fleetloop.pipelines.lake_sink
import fleetloop.pipelines.stage_shell  # noqa: F401
from fleetloop.platform.metrics import METRIC_PREFIX, REGISTRY, start_exporter
from fleetloop.platform.services import prometheus
from fleetloop.platform.services.alertmanager import DEPLOY_DIR
from fleetloop.platform.settings import Settings

with warnings.catch_warnings():
    # typer 0.20 imports a helper that click 8.5 deprecates; the warning is theirs, not ours.
    warnings.simplefilter("ignore", DeprecationWarning)
    from fleetloop.cli import sim as sim_cli

RULES_DIR = DEPLOY_DIR / "rules"
TESTS_DIR = Path(__file__).parent
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
TEST_FILES = sorted(TESTS_DIR.glob("*_test.yml"))
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (`make prometheus` installs it; CI always has it)"
)
# A metric name in PromQL or in a template's query: the platform prefix, then name characters. Recording rules
# are named fleetloop:...: (a colon after the prefix word), so they never match.
_NAME_RE = re.compile(rf"\b{METRIC_PREFIX}[a-zA-Z0-9_]+")
_SERIES_SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def _rules() -> list[dict[str, Any]]:
    return [rule for f in RULE_FILES for group in yaml.safe_load(f.read_text())["groups"] for rule in group["rules"]]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False)


def test_there_are_rules_and_unit_tests() -> None:
    assert {f.name for f in RULE_FILES} == {"exporters.yml", "fleet.yml", "pipelines.yml", "rollout.yml"}
    assert {f.name for f in TEST_FILES} == {f.name.replace(".yml", "_test.yml") for f in RULE_FILES}


@needs_promtool
def test_promtool_accepts_the_rule_files() -> None:
    done = _promtool("check", "rules", *map(str, RULE_FILES))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_of_the_rules_pass(test_file: Path) -> None:
    done = _promtool("test", "rules", str(test_file))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test_that_makes_it_fire() -> None:
    fired: set[str] = set()
    for f in TEST_FILES:
        for case in yaml.safe_load(f.read_text())["tests"]:
            fired |= {t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert len(alerts) == 7
    assert alerts - fired == set(), "alerts no promtool test expects to fire"


def test_every_alert_says_how_bad_and_what_to_do() -> None:
    for rule in _rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def _referenced_names() -> set[str]:
    names = set()
    for rule in _rules():
        text = rule["expr"] + " ".join(rule.get("annotations", {}).values())
        for name in _NAME_RE.findall(str(text)):
            for suffix in _SERIES_SUFFIXES:
                name = name.removesuffix(suffix)
            names.add(name)
    return names


def test_every_metric_a_rule_queries_is_registered(tmp_path: Path) -> None:
    # `sim run` declares its counters when it starts its exporter: do what it does, then stop serving.
    settings = Settings(state_dir=tmp_path)
    sim_cli._metrics(settings)
    start_exporter(settings, "sim").close()
    referenced = _referenced_names()
    assert {"fleetloop_sim_fallback_activations_total", "fleetloop_rollout_wave"} <= referenced  # the parse works
    assert referenced - set(REGISTRY.names()) == set(), "rules query metrics that nothing registers"


@needs_promtool
def test_the_rendered_configuration_is_valid_for_the_installed_prometheus(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, prometheus_scrape_interval_s=0.5, prometheus_port=29999)
    path = tmp_path / "prometheus.yml"
    path.write_text(prometheus.render_config(settings))
    done = _promtool("check", "config", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 rule files found" in done.stdout
    config = yaml.safe_load(path.read_text())
    assert config["global"]["evaluation_interval"] == "500ms"
    (file_sd,) = config["scrape_configs"][0]["file_sd_configs"]
    assert file_sd["files"] == [str(tmp_path.resolve() / "metrics" / "targets" / "*.json")]
