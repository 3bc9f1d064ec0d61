"""huskies-agent: a Kubernetes operator that runs a huskies story pipeline's work as Jobs."""

__version__ = "0.1.0"
