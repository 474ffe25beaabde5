"""The request log on the bus, as `kubectl webhooks logs` and `redeliver` read it (NATS reached directly).

Pure: rows and what to redeliver from records. I/O: an ephemeral consumer on the log stream from a
start time, and publications of delivery messages. Authorization is the NATS account's: reading
``webhook-operator.log.<namespace>.>`` and publishing to ``webhook-operator.deliveries.<namespace>.>``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

from webhook_operator.bus.config import BusSettings, connect_options
from webhook_operator.bus.messages import (
    FINAL,
    LOG_PREFIX,
    LOG_STREAM,
    MSG_ID_HEADER,
    Delivery,
    deliveries_subject,
    log_subject,
)
from webhook_operator.model import parse_time

Record = dict[str, Any]


def log_rows(records: Iterable[Record], since: dt.datetime, failed_only: bool) -> list[list[Any]]:
    """One row per attempt record, newest first."""
    rows: list[tuple[dt.datetime, list[Any]]] = []
    for record in records:
        when = parse_time(record.get("time"))
        if when is None or when < since:
            continue
        if failed_only and record.get("outcome") != "Failed":
            continue
        rows.append(
            (
                when,
                [
                    when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    record.get("event"),
                    record.get("eventId"),
                    record.get("outcome"),
                    record.get("attempts", 0),
                    record.get("statusCode", "-"),
                    f"{record.get('durationMs', 0)}ms",
                    record.get("error", ""),
                ],
            )
        )
    rows.sort(key=lambda r: r[0], reverse=True)
    return [r for _, r in rows]


def to_redeliver(records: Iterable[Record], event_id: str) -> list[Delivery]:
    """The failed deliveries of an event: those whose latest final record is Failed."""
    latest: dict[str, Record] = {}
    for record in records:
        if record.get("eventId") == event_id and record.get("outcome") in FINAL:
            latest[str(record.get("id"))] = record  # records come in stream order
    return [
        Delivery.decode(json.dumps(r["delivery"]).encode()) for r in latest.values() if r.get("outcome") == "Failed"
    ]


def to_replay(records: Iterable[Record], since: dt.datetime, failed_only: bool) -> tuple[list[Delivery], int]:
    """A webhook's deliveries of events stored since ``since`` whose latest record is final (Failed only
    with ``failed_only``), in event order; and how many of the window are still in flight (Retrying)."""
    latest: dict[str, Record] = {}
    for record in records:
        latest[str(record.get("id"))] = record  # records come in stream order: the last one counts
    chosen: list[Delivery] = []
    in_flight = 0
    for record in latest.values():
        outcome = record.get("outcome")
        if outcome not in FINAL:
            when = parse_time(record.get("time"))
            in_flight += 1 if when is not None and when >= since else 0
            continue
        if failed_only and outcome != "Failed":
            continue
        if not isinstance(record.get("delivery"), dict):
            continue  # recorded before final records carried their event
        delivery = Delivery.decode(json.dumps(record["delivery"]).encode())
        created = parse_time(delivery.created_at)
        if created is None or created < since:
            continue
        chosen.append(delivery)
    chosen.sort(key=lambda d: (d.seq, d.created_at, d.id))
    return chosen, in_flight


def progress(records: Iterable[Record], ids: Sequence[str], requested_at: str) -> dict[str, int]:
    """How a redelivery or replay ``requested_at`` of ``ids`` stands: delivered, failed, pending."""
    outcomes = {
        str(r.get("id")): str(r.get("outcome"))
        for r in records
        if r.get("redelivery") == requested_at and r.get("outcome") in FINAL
    }
    got = [outcomes.get(i) for i in ids]
    return {
        "delivered": sum(1 for o in got if o == "Succeeded"),
        "failed": sum(1 for o in got if o == "Failed"),
        "pending": sum(1 for o in got if o is None),
    }


def finished(records: Iterable[Record], ids: Sequence[str], requested_at: str) -> dict[str, str] | None:
    """Final outcomes of a redelivery by delivery id, once every one has one."""
    outcomes = {
        str(r.get("id")): str(r.get("outcome"))
        for r in records
        if r.get("redelivery") == requested_at and r.get("outcome") in FINAL
    }
    return outcomes if all(i in outcomes for i in ids) else None


async def read_log(bus: BusSettings, namespace: str, webhook: str | None, since: dt.datetime) -> list[Record]:
    """Records of one webhook (or, with None, of the namespace) stored since ``since``, in stream order."""
    import nats
    import nats.errors
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await nats.connect(**{**connect_options(bus), "max_reconnect_attempts": 2})  # type: ignore[arg-type]
    try:
        js = nc.jetstream(timeout=10)
        subject = log_subject(namespace, webhook) if webhook else f"{LOG_PREFIX}{namespace}.*"
        info = await js.stream_info(LOG_STREAM, subjects_filter=subject)
        if not info.state.subjects:
            return []
        sub = await js.pull_subscribe(
            subject,
            stream=LOG_STREAM,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=since.astimezone(dt.UTC),
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30.0,
            ),
        )
        records: list[Record] = []
        while True:
            try:
                msgs = await sub.fetch(500, timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                break
            for msg in msgs:
                try:
                    records.append(json.loads(msg.data))
                except ValueError:
                    continue
            if msgs and msgs[-1].metadata.num_pending == 0:
                break
        await sub.unsubscribe()
        return records
    finally:
        await nc.close()


async def republish(bus: BusSettings, deliveries: Sequence[Delivery], requested_at: str) -> None:
    import nats

    nc = await nats.connect(**{**connect_options(bus), "max_reconnect_attempts": 2})  # type: ignore[arg-type]
    try:
        js = nc.jetstream(timeout=10)
        for delivery in deliveries:
            again = Delivery(**{**delivery.__dict__, "redelivery": requested_at})
            await js.publish(
                deliveries_subject(again.namespace, again.webhook),
                again.encode(),
                headers={MSG_ID_HEADER: f"{again.id}/{requested_at}"},
            )
    finally:
        await nc.close()
