"""Development tooling for huskies-agent: never part of the operator image.

``devcluster`` (a real Kubernetes control plane on loopback, no Docker), ``localrun`` (rendezvous
and operator as local child processes) and ``proc`` (the one child-process supervisor both use).
The tests, the benchmarks and the ``huskies-agent demo`` developer command use it; the runtime
package ``huskies_agent`` imports it nowhere else (an import-linter contract checks this).
"""
