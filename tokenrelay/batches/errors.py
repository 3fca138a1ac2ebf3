"""The errors of the batch routes, leaves of the gateway's error tree."""

from __future__ import annotations

from tokenrelay.errors import GatewayError, Overloaded


class BatchNotFound(GatewayError):
    """Unknown, or another principal's (which is not told apart)."""

    status = 404
    error_type = "not_found_error"


class BatchNotEnded(GatewayError):
    """Results asked for before the batch has ended."""

    status = 409
    error_type = "conflict_error"


class BatchesUnavailable(Overloaded):
    """Off (no database, or no upstream with Claude's Batch API), or the database
    cannot be reached."""
