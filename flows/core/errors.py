"""The root of the flow's own exceptions.

Every error the flow raises on purpose (a model that cannot be served, a server that cannot score, an archive
or a location refused, a request that failed) is a `ServingError`: a caller that wants to tell the flow's
verdicts from a bug catches that one class. Each subclass carries its reason as a value (`str(error)`, and
`reason` where a caller reports it), one line, bounded, naming what failed.
"""

from __future__ import annotations


class ServingError(Exception):
    """Something the flow refused or could not do, with the reason."""


class ConfigurationError(ServingError, ValueError):
    """The flow cannot start as set up: a setting, or what the deployment must provide (a topic, a key, a
    recovery store), is wrong or missing. Said at start, in one line naming it and how to fix it."""


class WrongScoreCount(ServingError, ValueError):
    """A model answered a call with another number of scores than it was given pairs."""


class ScoresOutOfRange(ServingError, ValueError):
    """A model answered a call with a score that is not finite or lies outside the policy's output range."""
