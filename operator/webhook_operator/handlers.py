"""Every kopf registration in one place: what the operator reacts to. The work is elsewhere.

Only watch-event handlers are used, so kopf writes no finalizers or progress annotations to
users' objects; state lives in status (see docs/architecture.md). WebhookEvents, the hot path,
are watched by ``watch.ResourceWatch`` (started in ``runtime.start``), not by kopf.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from webhook_operator import GROUP, VERSION
from webhook_operator import runtime as rt
from webhook_operator.kube import load_credentials
from webhook_operator.settings import Settings


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    # Our own names, should kopf ever need to write to an object.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    # kopf waits this long for more events of one object before handling it; keep latency low.
    settings.batching.batch_window = 0.01
    # kopf keeps a worker per object until it has seen no event for this long. Every health write
    # makes a Webhook event, so with the default 5 s a thousand busy webhooks kept a thousand
    # workers (and the last body each saw) alive for as long as deliveries flowed.
    settings.batching.idle_timeout = 0.5
    # kopf lists every Webhook and every Secret before watching them; unpaged, each list's whole JSON and
    # the bodies queued for its per-object workers were in memory at once (10,000 webhooks: 363 MB
    # after a restart, 380 MB at the peak). Page by page, the workers drain each page before the next.
    settings.watching.chunk_size = 500
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.peering.standalone = True


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    creds = load_credentials()
    return kopf.ConnectionInfo(
        server=creds.server,
        ca_path=creds.ca_path,
        insecure=not creds.verify,
        certificate_path=creds.cert_path,
        private_key_path=creds.key_path,
        token=creds.token,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_kopf(settings)
    if "runtime" not in memo:  # cli.run builds it first, to serve the probes before kopf starts
        ours: Settings = memo.settings
        memo.runtime = rt.build_runtime(ours)
    await rt.start(memo.runtime, serve_metrics=memo.get("serve_metrics", True))


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if "runtime" in memo:
        await rt.stop(memo.runtime)


@kopf.on.event(GROUP, VERSION, "webhooks")
async def webhook_changed(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    body = dict(event["object"])
    body.setdefault("kind", "Webhook")
    await memo.runtime.webhooks.on_event(event.get("type"), body)


@kopf.on.event("", "v1", "secrets")
async def secret_changed(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    await memo.runtime.webhooks.on_secret_event(dict(event["object"]), event.get("type"))
