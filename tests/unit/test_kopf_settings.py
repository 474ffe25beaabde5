"""kopf's settings that bound the operator's memory with many Webhooks and Secrets (handlers.configure_kopf)."""

from __future__ import annotations

import kopf

from webhook_operator.handlers import configure_kopf


def configured() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    return settings


def test_kopf_lists_webhooks_and_secrets_page_by_page() -> None:
    # Unpaged, kopf's first list of 10,000 Webhooks and 10,000 Secrets held both whole JSON bodies and
    # every object queued for its worker at once: a restart peaked at 380 MB instead of 210 MB.
    chunk = configured().watching.chunk_size
    assert chunk is not None and 0 < chunk <= 500


def test_kopf_workers_are_not_limited() -> None:
    # A worker limit does not hold the list back: the objects wait in their queues instead, with their
    # bodies (a restart of 10,000 webhooks with 100 workers: 403 MB, more than with none).
    assert configured().queueing.worker_limit is None


def test_idle_kopf_workers_end_soon() -> None:
    assert configured().queueing.idle_timeout <= 1.0
