"""Secrets kept out of text: one redaction for every message, log line and error we build.

The other half, registering a secret with Airflow's log masker so task logs show ``***``,
is Airflow's: :func:`promptops.airflow_adapters.connections.mask_secret`. Library code that
holds a secret of its own (the breaker's Redis password) takes such a masker as an argument
(:data:`SecretMasker`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

MASK = "***"

#: Registers a secret with a log masker: ``mask(secret, what)``, ``what`` naming the secret
#: in a warning when it cannot be registered (never the secret itself). Must not raise.
SecretMasker = Callable[[str, str], None]


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***``, longest first, so no tail of a longer
    secret survives a shorter one that is part of it. Empty secrets are ignored."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
