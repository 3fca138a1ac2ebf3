"""`log_event`'s former home: it lives in `tokenrelay.observability.log`."""

from tokenrelay.observability.log import log_event

__all__ = ["log_event"]
