"""The built-in services of the local stack, one module each, every one exporting its ``SPEC``.

``spec`` holds what a service is (:class:`~fleetloop.platform.services.spec.ServiceSpec`); ``kafka``,
``mlflow_server`` and ``ota_repo`` (the signed-release server) are the built-in ones. This ``__init__`` imports
nothing: a spec is a value that the CLI puts in the stack's list (``fleetloop.cli.services``), not something an
import registers.
"""

__all__ = ["kafka", "mlflow_server", "ota_controller", "ota_repo", "spec"]
