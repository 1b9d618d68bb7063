"""Settings are validated once, with messages that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetloop.platform.errors import ConfigError, FleetloopError, SetupError, UserInputError
from fleetloop.platform.settings import Settings, load_settings


def test_defaults_run_on_loopback(tmp_path: Path) -> None:
    s = load_settings({"FLEETLOOP_STATE_DIR": str(tmp_path)})
    assert s.host == "127.0.0.1"
    assert s.bootstrap_servers == "127.0.0.1:19092"
    assert s.tracking_uri == "http://127.0.0.1:15000"
    assert s.ota_repo_port == 18765
    assert not s.kafka_external and not s.mlflow_external


def test_env_overrides_and_types(tmp_path: Path) -> None:
    s = load_settings(
        {"FLEETLOOP_STATE_DIR": str(tmp_path), "FLEETLOOP_KAFKA_PORT": "29092", "FLEETLOOP_OTA_REPO_PORT": "28765"}
    )
    assert s.kafka_port == 29092 and s.ota_repo_port == 28765
    assert s.state_dir == tmp_path


def test_standard_variables_point_at_existing_services(tmp_path: Path) -> None:
    s = load_settings(
        {
            "FLEETLOOP_STATE_DIR": str(tmp_path),
            "MLFLOW_TRACKING_URI": "http://10.0.0.5:5000/",
            "KAFKA_BOOTSTRAP_SERVERS": "10.0.0.6:9092",
        }
    )
    assert s.mlflow_external and s.tracking_uri == "http://10.0.0.5:5000"
    assert s.kafka_external and s.bootstrap_servers == "10.0.0.6:9092"


def test_fleetloop_variable_beats_standard_variable(tmp_path: Path) -> None:
    s = load_settings(
        {
            "FLEETLOOP_STATE_DIR": str(tmp_path),
            "MLFLOW_TRACKING_URI": "http://a:1",
            "FLEETLOOP_MLFLOW_TRACKING_URI": "http://b:2",
        }
    )
    assert s.tracking_uri == "http://b:2"


def test_config_file_below_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "conf.toml"
    cfg.write_text('kafka_port = 30000\nmlflow_port = 30001\nmodel_name = "policy-x"\n')
    s = load_settings(
        {"FLEETLOOP_STATE_DIR": str(tmp_path), "FLEETLOOP_CONFIG": str(cfg), "FLEETLOOP_MLFLOW_PORT": "30002"}
    )
    assert (s.kafka_port, s.mlflow_port, s.model_name) == (30000, 30002, "policy-x")


def test_config_file_in_state_dir_is_found(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("kafka_partitions = 7\n")
    assert load_settings({"FLEETLOOP_STATE_DIR": str(tmp_path)}).kafka_partitions == 7


def test_invalid_port_names_the_variable_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings({"FLEETLOOP_STATE_DIR": str(tmp_path), "FLEETLOOP_KAFKA_PORT": "80"})
    assert "FLEETLOOP_KAFKA_PORT" in str(e.value) and "1024-65535" in str(e.value)


def test_non_numeric_port_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kafka_port"):
        load_settings({"FLEETLOOP_STATE_DIR": str(tmp_path), "FLEETLOOP_KAFKA_PORT": "lots"})


def test_unknown_variable_is_a_typo_not_ignored(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FLEETLOOP_KAFKA_PROT"):
        load_settings({"FLEETLOOP_STATE_DIR": str(tmp_path), "FLEETLOOP_KAFKA_PROT": "1"})


def test_unknown_key_in_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("kafak_port = 1\n")
    with pytest.raises(ConfigError, match="kafak_port"):
        load_settings({"FLEETLOOP_STATE_DIR": str(tmp_path), "FLEETLOOP_CONFIG": str(cfg)})


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("kafka_port = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({"FLEETLOOP_STATE_DIR": str(tmp_path), "FLEETLOOP_CONFIG": str(cfg)})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a file"):
        load_settings({"FLEETLOOP_STATE_DIR": str(tmp_path), "FLEETLOOP_CONFIG": str(tmp_path / "nope.toml")})


@pytest.mark.parametrize("uri", ["sqlite:///x.db", "127.0.0.1:5000"])
def test_tracking_uri_must_be_a_server(tmp_path: Path, uri: str) -> None:
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
        load_settings({"FLEETLOOP_STATE_DIR": str(tmp_path), "MLFLOW_TRACKING_URI": uri})


def test_bootstrap_must_be_host_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="host:port"):
        load_settings({"FLEETLOOP_STATE_DIR": str(tmp_path), "KAFKA_BOOTSTRAP_SERVERS": "broker"})


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = Settings(state_dir=tmp_path)
    with pytest.raises(ValueError):
        s.kafka_port = 1  # type: ignore[misc]


def test_exit_codes_group_by_fault() -> None:
    assert ConfigError("x").exit_code == UserInputError.exit_code == 2
    assert SetupError("x").exit_code == 3
    assert issubclass(ConfigError, FleetloopError)
