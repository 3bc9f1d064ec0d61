"""Keeping secret values out of logs, the pod's stdout and the termination message.

The runner knows its secrets by value (the git token, the Anthropic key, a password in
the repo URL, and any env var whose name looks secret); every line it prints, every
log record and the result JSON pass through :meth:`Redactor.redact`.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterable, Mapping

REPLACEMENT = "<redacted>"
#: Values shorter than this are not treated as secrets (too likely to be ordinary words).
MIN_SECRET_LENGTH = 6

_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_?KEY|CREDENTIAL)", re.IGNORECASE)
#: Env vars that name secret *files* or settings, not secret values.
_NOT_SECRET_NAMES = frozenset({"HUSKIES_GIT_SSH_KEY_FILE", "HUSKIES_GIT_KNOWN_HOSTS_FILE"})


def secret_env_values(environ: Mapping[str, str]) -> list[str]:
    """Values of env vars whose names look like they hold secrets."""
    out = []
    for name, value in environ.items():
        if name in _NOT_SECRET_NAMES or name.endswith("_FILE"):
            continue
        if _SECRET_NAME.search(name) and len(value.strip()) >= MIN_SECRET_LENGTH:
            out.append(value.strip())
    return out


class Redactor:
    """Replaces every known secret value in a text by ``<redacted>``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        for secret in secrets:
            if secret and len(secret) >= MIN_SECRET_LENGTH:
                self._secrets.add(secret)
        if self._secrets:
            # Longest first, so a secret that contains another is replaced whole.
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def redact(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(REPLACEMENT, text)

    def __bool__(self) -> bool:
        return bool(self._secrets)


class RedactingFilter(logging.Filter):
    """A handler filter that redacts the message, extra string fields and tracebacks."""

    _STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        redact = self.redactor.redact
        record.msg = redact(record.getMessage())
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in self._STANDARD and isinstance(value, str):
                record.__dict__[key] = redact(value)
        if record.exc_info:
            text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_info = None
            record.exc_text = None
            record.__dict__["traceback"] = redact(text)
        return True


def install_log_redaction(redactor: Redactor) -> RedactingFilter:
    """Attach a redacting filter to every handler of the root logger."""
    flt = RedactingFilter(redactor)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    for handler in root.handlers:
        handler.addFilter(flt)
    return flt
