"""Built-in services of the local stack; importing this package registers them with the launcher."""

from fleetloop.platform.services import kafka, mlflow_server

__all__ = ["kafka", "mlflow_server"]
