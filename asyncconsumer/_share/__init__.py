"""Share groups (KIP-932): the wire protocol and :class:`ShareConsumer`."""

from ._consumer import ShareConsumer, ShareGroupError, ShareMessage

__all__ = ["ShareConsumer", "ShareGroupError", "ShareMessage"]
