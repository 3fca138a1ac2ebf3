"""The errors of the conversation routes, leaves of the gateway's error tree."""

from __future__ import annotations

from tokenrelay.errors import GatewayError, Overloaded


class ConversationNotFound(GatewayError):
    """Unknown, deleted, or another principal's (which is not told apart)."""

    status = 404
    error_type = "not_found_error"


class ConversationBusy(GatewayError):
    """A send while the conversation's previous answer is still being generated."""

    status = 409
    error_type = "conflict_error"


class ConversationsUnavailable(Overloaded):
    """Off (no database), or the database cannot be reached."""
