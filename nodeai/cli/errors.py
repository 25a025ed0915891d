"""Errors of the command line and the exit code each one maps to.

::

    NodeAIError
    +-- CliError                 exit 1: something failed that the user did not cause
        +-- ServiceUnavailable   the RPC, the indexer or IPFS cannot be reached
        +-- CheckFailed          a verification ran and did not pass (e.g. a tampered receipt)
        +-- UserError            exit 2: the user can fix it (input, config, password, timing)
            +-- NotLoggedIn      no keystore yet
            +-- WrongPassword    the keystore did not decrypt
            +-- MissingComponent a part of NodeAI Hub this command needs is not installed

Every error carries a ``hint``: the next thing to try.
"""

from __future__ import annotations

from nodeai.errors import NodeAIError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USER_ERROR = 2


class CliError(NodeAIError):
    """Root of the command line's own errors."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n  hint: {hint}")


class ServiceUnavailable(CliError):
    """A service (RPC node, indexer, IPFS) did not answer."""


class CheckFailed(CliError):
    """A verification ran to the end and the answer is "no"."""


class UserError(CliError, ValueError):
    """Bad input, missing configuration, or an action that is not possible now."""

    exit_code = EXIT_USER_ERROR


class NotLoggedIn(UserError):
    def __init__(self, keystore: str):
        super().__init__(f"no keystore at {keystore}",
                         "run `nodeai login --create` (new key) or `nodeai login --import` (existing key)")


class WrongPassword(UserError):
    def __init__(self, keystore: str):
        super().__init__(f"wrong password for the keystore {keystore}",
                         "retype it, or check --password-file / NODEAI_PASSWORD")


class MissingComponent(UserError):
    def __init__(self, module: str, what: str):
        super().__init__(f"{what} needs {module}, which is not installed in this environment",
                         "install NodeAI Hub with all its components (see README), then retry")
