"""An MLflow tracking server: SQLite backend, local artifact store served over HTTP, one worker."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from fleetloop.platform.services.spec import Health, ServiceSpec
from fleetloop.platform.settings import Settings

__all__ = ["SPEC", "mlflow_health"]


def _command(settings: Settings, folder: Path) -> list[str]:
    data = folder / "data"
    (data / "artifacts").mkdir(parents=True, exist_ok=True)
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        settings.host,
        "--port",
        str(settings.mlflow_port),
        "--backend-store-uri",
        f"sqlite:///{data / 'mlflow.db'}",
        # Clients upload through the server (mlflow-artifacts:/), so they need no access to this folder.
        "--serve-artifacts",
        "--artifacts-destination",
        str(data / "artifacts"),
        "--workers",
        "1",
    ]


def mlflow_health(settings: Settings) -> Health:
    """Healthy when /health answers OK and the REST API finds the default experiment."""
    base = settings.tracking_uri
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=3) as r:
            body = r.read().decode(errors="replace").strip()
        if r.status != 200:
            return Health(False, f"/health answered {r.status}")
        url = f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
        with urllib.request.urlopen(url, timeout=5) as r:
            exp = json.loads(r.read())
        return Health(True, f"health {body}; default experiment {exp['experiment']['experiment_id']}")
    except urllib.error.HTTPError as e:
        return Health(False, f"{e.url} answered HTTP {e.code}")
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        return Health(False, f"no answer from {base}: {type(e).__name__}")


SPEC = ServiceSpec(
    name="mlflow",
    description="MLflow tracking server (SQLite backend, served artifacts)",
    address=lambda s: s.tracking_uri,
    is_external=lambda s: s.mlflow_external,
    ports=lambda s: [s.mlflow_port],
    command=_command,
    health=mlflow_health,
    cmdline_marker="mlflow",
    # MLflow's background job runner (GenAI jobs, 7 huey workers) is unused here and costs a 2-core box.
    extra_env=lambda s: {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
)
