"""Errors that map to gaffer's exit statuses (1 build failed, 2 bad input, 3 environment)."""

from __future__ import annotations


class GafferError(Exception):
    """Base class: printed as one line `gaffer: <message>` and mapped to `exit_status`."""

    exit_status = 3


class BuildFailed(GafferError):
    """A task (or the build) failed: exit status 1."""

    exit_status = 1


class UserError(GafferError):
    """The user's input was wrong (usage, config, graph file, env var): exit status 2."""

    exit_status = 2


class EnvironmentProblem(GafferError):
    """Something outside the user's input is broken (disk full, server refused): exit status 3."""

    exit_status = 3
