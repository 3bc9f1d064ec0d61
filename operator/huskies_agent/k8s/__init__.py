"""Kubernetes object names, labels and pure object builders (no API calls)."""
