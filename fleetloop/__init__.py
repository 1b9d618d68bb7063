"""fleetloop: simulate and operate the closed data loop of an autonomous-driving fleet.

The package ``__init__`` files import nothing heavy so that ``fleetloop.sim`` and the
numeric core of ``fleetloop.edge_agent`` run on a bare machine with torch and numpy.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
