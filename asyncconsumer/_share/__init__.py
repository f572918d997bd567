"""Share groups (KIP-932): the wire protocol and :class:`ShareConsumer`."""
