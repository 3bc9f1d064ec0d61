"""Every test docs/claims.md names as the enforcement of a rule exists (a renamed test must update the doc)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"(tests/[\w/]+\.py)::(\w+)(?:\.(\w+))?")


def test_every_test_named_in_claims_md_exists() -> None:
    text = (ROOT / "docs" / "claims.md").read_text()
    references = REFERENCE.findall(text)
    assert len(references) > 20, "the reference pattern no longer matches the doc"
    missing = []
    for path, name, member in references:
        source = (ROOT / path).read_text() if (ROOT / path).is_file() else ""
        for symbol in (name, member):
            defined = rf"^\s*((async\s+)?def\s+|class\s+){symbol}\b|^{symbol}\s*="  # a test, a class, an alias
            if symbol and not re.search(defined, source, re.MULTILINE):
                missing.append(f"{path}::{symbol}")
    assert not missing, f"docs/claims.md names tests that do not exist: {missing}"
