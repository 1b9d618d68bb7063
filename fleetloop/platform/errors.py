"""The platform's exception tree, grouped by who is at fault, with CLI exit codes.

    FleetloopError                      exit 1
    ├── UserInputError                  exit 2   the caller asked for something invalid
    │   ├── ConfigError                          a setting or config file is wrong
    │   │   └── FleetConfigError                 a fleet run's configuration is invalid (edge_agent)
    │   │       └── FaultError                   an injected-fault description is invalid (edge_agent)
    │   ├── NotFoundError                        a named thing (model, version, run) does not exist
    │   └── TransitionNotAllowed                 a registry stage change the policy forbids
    ├── SetupError                      exit 3   this machine lacks something (Java, jars, a free port)
    ├── ServiceUnavailable              exit 4   a service (Kafka, MLflow) did not answer in time
    ├── DataError                       exit 5   a record or artifact is malformed
    │   ├── SchemaError                          unknown schema, unknown major version, bad payload
    │   ├── OnboardBufferError                   frames that do not fit an on-board buffer; a damaged one (edge_agent)
    │   └── ReplyRejected                        a federated client's reply unfit for aggregation (federation)
    ├── ShardError                      exit 1   a fleet shard (process or Ray actor) failed; carries its traceback
    └── FederatedRunFailed              exit 1*  a Flower run ended failed or stopped (federation); *the exit code
                                                 of the error that ended it, where the ServerApp raised one of ours

The classes marked (edge_agent) are raised by ``fleetloop.edge_agent``, whose numeric core may import this module
because it imports nothing (the standard library's exceptions only).

Every message says what was wrong and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "FaultError",
    "FederatedRunFailed",
    "FleetConfigError",
    "FleetloopError",
    "NotFoundError",
    "OnboardBufferError",
    "ReplyRejected",
    "SchemaError",
    "ServiceUnavailable",
    "SetupError",
    "ShardError",
    "TransitionNotAllowed",
    "UserInputError",
]


class FleetloopError(Exception):
    """Base of every error the platform raises on purpose."""

    exit_code = 1


class UserInputError(FleetloopError):
    """The caller asked for something invalid; fixing the input fixes it."""

    exit_code = 2


class ConfigError(UserInputError):
    """A setting (environment variable or config file) is invalid."""


class NotFoundError(UserInputError):
    """A named model, version, run or service does not exist."""


class TransitionNotAllowed(UserInputError):
    """A model-stage transition that the stage policy forbids."""


class SetupError(FleetloopError):
    """This machine lacks something the platform needs (Java, Kafka jars, a free port)."""

    exit_code = 3


class ServiceUnavailable(FleetloopError):
    """A service did not answer (not started, crashed, or timed out)."""

    exit_code = 4


class DataError(FleetloopError):
    """A record, batch or artifact is malformed."""

    exit_code = 5


class SchemaError(DataError):
    """A payload names an unknown schema or major version, or does not match its schema."""


class FleetConfigError(ConfigError):
    """A fleet run's configuration is invalid: ``FleetConfig`` and what it carries (arbiter, triggers), the vehicle
    ids, the models and their assignment to vehicles, the shard layout."""


class FaultError(FleetConfigError):
    """An injected-fault description (``--inject``) is invalid; the message lists what is valid."""


class OnboardBufferError(DataError):
    """Frames that do not fit an on-board buffer, or a buffer directory that is missing or malformed."""


class ReplyRejected(DataError):
    """A federated client's reply that cannot be aggregated (malformed, non-finite, unlike the global model); the
    round drops and counts it, it never ends the round."""


class ShardError(FleetloopError):
    """A fleet shard failed; the message carries the shard's traceback."""


class FederatedRunFailed(FleetloopError):
    """A federated run on the deployment engine ended failed or stopped; the message carries the SuperLink's reason.
    Where the ServerApp raised one of these errors, ``exit_code`` is that error's."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
