"""What the operator does with a finished run: a pure table from the runner's exit code.

The runner's exit code says what happened (:class:`~huskies_agent.contract.ExitCode`);
the table says what it means for the story and the node: advance, count a failure
towards blocking the story, or release the claim without counting (the failure was the
environment's: a revoked API key, an overloaded API, a lost claim, a deleted pod).
Both sides read it, so it lives in :mod:`huskies_agent.contract` (the engine may not
import the runner); this module keeps the runner-side names.
"""

from __future__ import annotations

from huskies_agent.contract import (
    DISPOSITIONS as TABLE,
)
from huskies_agent.contract import (
    UNKNOWN_DISPOSITION as UNKNOWN,
)
from huskies_agent.contract import (
    Action,
    Disposition,
    NodeHold,
    disposition,
)

__all__ = ["TABLE", "UNKNOWN", "Action", "Disposition", "NodeHold", "disposition"]
