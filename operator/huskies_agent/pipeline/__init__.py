"""The huskies pipeline: stages, story records and the replicated CRDT document.

Everything in this package is free of Kubernetes and network I/O.
"""
