"""Control plane and shared infrastructure: settings, launcher, bus, registry, metrics, run records.

Import the submodules you need (``fleetloop.platform.settings``, ``fleetloop.platform.bus``, ...);
this ``__init__`` imports nothing so that light processes stay light.
"""

__all__ = ["atomic", "errors", "launcher", "metrics", "runs", "settings"]
