"""bus/pull.py's fetch and bus/publish.py's Publisher on a real nats-server (JetStream, file storage)."""

from __future__ import annotations

import asyncio
import time

import nats
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy

from tests.support.nats import NatsServer
from webhook_operator.bus import pull
from webhook_operator.bus.publish import Publisher


async def consumer(server: NatsServer, ack_wait_s: float = 30.0) -> tuple[nats.NATS, object, object]:
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await js.add_stream(name="PULL", subjects=["pull.>"])
    await js.add_consumer(
        "PULL", ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait_s, max_waiting=16)
    )
    return nc, js, await pull.bind(js, "c", "PULL")


async def test_fetch_returns_what_is_there_at_once_and_at_most_the_batch(nats_server: NatsServer) -> None:
    nc, js, sub = await consumer(nats_server)
    try:
        for i in range(5):
            await js.publish("pull.a", str(i).encode(), headers={"Nats-Msg-Id": f"m{i}"})  # type: ignore[attr-defined]
        first = await pull.fetch(sub, 3, 2.0)
        assert [m.data for m in first] == [b"0", b"1", b"2"]
        began = time.monotonic()
        rest = await pull.fetch(sub, 10, 2.0)
        assert [m.data for m in rest] == [b"3", b"4"]
        assert time.monotonic() - began < 1.0, "fewer than the batch must not wait for the timeout"
        assert rest[0].headers == {"Nats-Msg-Id": "m3"} and rest[0].metadata.num_delivered == 1
        for msg in first + rest:
            await msg.ack()
    finally:
        await nc.close()


async def test_fetch_waits_for_a_first_message_and_times_out_without_one(nats_server: NatsServer) -> None:
    nc, js, sub = await consumer(nats_server)
    try:
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            await pull.fetch(sub, 5, 0.5)
        assert 0.4 < time.monotonic() - began < 1.5

        async def later() -> None:
            await asyncio.sleep(0.3)
            await js.publish("pull.b", b"late")  # type: ignore[attr-defined]

        began = time.monotonic()
        publisher = asyncio.ensure_future(later())
        got = await pull.fetch(sub, 1, 3.0)
        await publisher
        assert [m.data for m in got] == [b"late"]
        assert time.monotonic() - began < 2.0
    finally:
        await nc.close()


async def test_a_message_arriving_after_a_fetch_returned_comes_with_the_next_one(nats_server: NatsServer) -> None:
    nc, js, sub = await consumer(nats_server)
    try:
        with pytest.raises(TimeoutError):
            await pull.fetch(sub, 4, 0.3)  # its waiting request may still be open on the server
        await js.publish("pull.c", b"x")  # type: ignore[attr-defined]
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            try:
                got = [m.data for m in await pull.fetch(sub, 4, 0.5)]
            except TimeoutError:
                pass
        assert got == [b"x"], "not lost between two fetches, and not handed out twice"
        with pytest.raises(TimeoutError):
            await pull.fetch(sub, 4, 0.3)
    finally:
        await nc.close()


async def test_a_status_of_an_earlier_request_does_not_end_the_one_under_way(nats_server: NatsServer) -> None:
    """A 408 of a request whose fetch had given up, arriving while the next fetch waits: read as that
    fetch's answer, it would send a second request with the first still open, and the orphan would hand
    out messages nobody asked for after the fetch returned."""
    nc, js, sub = await consumer(nats_server)
    try:
        fetching = asyncio.ensure_future(pull.fetch(sub, 2, 3.0))
        await asyncio.sleep(0.2)  # its request is waiting on the server (nothing in the stream yet)
        stale = {"Status": "408", "Description": "Request Timeout"}
        await nc.publish(f"{sub._deliver}.0", b"", headers=stale)  # type: ignore[attr-defined]
        await asyncio.sleep(0.2)
        for i in range(4):
            await js.publish("pull.e", str(i).encode())  # type: ignore[attr-defined]
        got = [m.data for m in await fetching]
        assert got in ([b"0"], [b"0", b"1"])  # the no_wait request ends when the stream runs dry between two
        await asyncio.sleep(0.5)
        assert sub._sub._pending_queue.qsize() == 0, "an orphaned request handed out more than the batch"  # type: ignore[attr-defined]
        info = await js.consumer_info("PULL", "c")  # type: ignore[attr-defined]
        assert (info.num_ack_pending, info.num_pending) == (len(got), 4 - len(got))
        rest = [m.data for m in await pull.fetch(sub, 5, 1.0)]
        assert got + rest == [b"0", b"1", b"2", b"3"]
    finally:
        await nc.close()


async def test_fetch_needs_a_subscription_with_a_reply_subject_per_request(nats_server: NatsServer) -> None:
    nc, js, _ = await consumer(nats_server)
    try:
        with pytest.raises(ValueError, match=r"pull\.bind"):
            await pull.fetch(await js.pull_subscribe_bind("c", "PULL"), 1, 0.1)  # type: ignore[attr-defined]
    finally:
        await nc.close()


async def test_an_unacked_message_comes_back_after_the_ack_wait(nats_server: NatsServer) -> None:
    nc, js, sub = await consumer(nats_server, ack_wait_s=1.0)
    try:
        await js.publish("pull.d", b"again")  # type: ignore[attr-defined]
        first = await pull.fetch(sub, 2, 1.0)
        assert [m.metadata.num_delivered for m in first] == [1]
        again = await pull.fetch(sub, 2, 3.0)
        assert [(m.data, m.metadata.num_delivered) for m in again] == [(b"again", 2)]
        meta = again[0].metadata
        assert pull.delivery_info(again[0]) == (2, meta.sequence.stream, meta.sequence.consumer) == (2, 1, 2)
        await again[0].ack()
    finally:
        await nc.close()


async def test_a_bad_fetch_is_refused() -> None:
    with pytest.raises(ValueError):
        await pull.fetch(object(), 0, 1.0)


async def test_publisher_futures_complete_with_the_stream_ack_or_its_error(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="PUB", subjects=["pub.>"], max_msgs=3, discard=DiscardPolicy.NEW)
        publisher = Publisher(nc)
        await publisher.start()
        acks = [await publisher.publish("pub.a", b"%d" % i, headers={"Nats-Msg-Id": f"id{i}"}) for i in range(3)]
        assert await asyncio.gather(*acks) == [None, None, None]
        again = await publisher.publish("pub.a", b"0", headers={"Nats-Msg-Id": "id0"})
        await again
        assert again.exception() is None, "a duplicate (dropped by the stream) is acked"
        with pytest.raises(nats.js.errors.APIError) as full:
            await (await publisher.publish("pub.a", b"4", headers={"Nats-Msg-Id": "id4"}))
        assert full.value.err_code == 10077  # maximum messages exceeded
        with pytest.raises(nats.js.errors.NoStreamResponseError):
            await (await publisher.publish("nostream.a", b"x"))
        assert (await js.stream_info("PUB")).state.messages == 3
        assert not publisher.futures, "answered publications are forgotten"
    finally:
        await nc.close()


async def test_a_publication_no_stream_answers_fails_after_the_timeout(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(name="PUB", subjects=["pub.>"])

        async def never_answer(msg: Msg) -> None:
            return None

        await nc.subscribe("silent.>", cb=never_answer)  # a responder, so no "no responders" either
        publisher = Publisher(nc, timeout_s=0.3)
        await publisher.start()
        started = time.monotonic()
        late = await publisher.publish("silent.a", b"x")
        acked = await publisher.publish("pub.a", b"y")
        assert await acked is None
        await asyncio.wait([late], timeout=2.0)  # fails here, not hangs, without the publisher's timer
        assert late.done() and isinstance(late.exception(), TimeoutError)
        assert 0.25 <= time.monotonic() - started < 2.0
        # The timer comes back for publications after the first ran out, and spares the answered ones.
        again, fine = await publisher.publish("silent.b", b"x"), await publisher.publish("pub.b", b"y")
        await asyncio.sleep(0.5)
        assert isinstance(again.exception(), TimeoutError) and fine.exception() is None
        # Answered publications are not kept for their deadline: the next publication lets them go.
        await asyncio.gather(*[await publisher.publish("pub.c", b"%d" % i) for i in range(3)])
        last = await publisher.publish("pub.c", b"3")
        assert [future for _, future in publisher._deadlines] == [last]
        await last
    finally:
        await nc.close()


def test_delivery_info_reads_both_forms_of_the_reply_subject() -> None:
    plain = Msg(_client=None, reply="$JS.ACK.S.c.3.1234.99.1700000000000000000.5")  # type: ignore[arg-type]
    domain = Msg(_client=None, reply="$JS.ACK.dom.hash.S.c.3.1234.99.1700000000000000000.5.x")  # type: ignore[arg-type]
    assert pull.delivery_info(plain) == pull.delivery_info(domain) == (3, 1234, 99)
    with pytest.raises(NotJSMessageError):
        pull.delivery_info(Msg(_client=None, reply="_INBOX.abc"))  # type: ignore[arg-type]
