"""Replication of the pipeline document with a rendezvous peer (Yjs sync over WebSocket).

* :mod:`.protocol` — the y-protocols sync messages and per-connection state, no I/O;
* :mod:`.client` — :class:`~.client.RendezvousClient`, the reconnecting client;
* :mod:`.server` — :class:`~.server.RendezvousServer`, the hub that persists the document;
* :mod:`.store` — the SQLite update log behind the server.
"""
