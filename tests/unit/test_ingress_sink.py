"""What the ingress stores in CR mode, and the ingress flags."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from webhook_operator.ingress.parse import event_object_name
from webhook_operator.ingress.sink import PublishGate, SinkUnavailable, webhook_event
from webhook_operator.settings import Settings, add_run_arguments, settings_from_args


def test_an_event_without_an_id_gets_a_generated_name_from_its_event_and_no_event_id() -> None:
    body = webhook_event("shop", "User.Created", {"id": 1}, None)
    assert body["apiVersion"] == "webhook-operator.io/v1alpha1" and body["kind"] == "WebhookEvent"
    assert body["metadata"] == {"namespace": "shop", "generateName": "user-created-"}
    assert body["spec"] == {"event": "User.Created", "data": {"id": 1}}


def test_an_event_with_an_id_is_named_from_it_and_carries_it() -> None:
    body = webhook_event("shop", "User.Created", None, "ce-1")
    assert body["metadata"] == {"namespace": "shop", "name": event_object_name("shop", "ce-1")}
    assert body["spec"] == {"event": "User.Created", "eventId": "ce-1"}  # null data is left out


def test_falsy_data_is_kept() -> None:
    for data in (0, "", [], {}, False):
        assert webhook_event("s", "A.B", data, None)["spec"]["data"] == data


def test_retry_after_is_a_whole_positive_number_of_seconds() -> None:
    assert SinkUnavailable("x", 0).retry_after_s == 1
    assert SinkUnavailable("x", 2.7).retry_after_s == 2


def settings(*argv: str) -> Settings:
    parser = argparse.ArgumentParser(prog="webhook-operator run")
    add_run_arguments(parser)
    return settings_from_args(parser.parse_args(list(argv)))


def test_the_ingress_is_off_by_default_with_a_64_kib_limit() -> None:
    assert (settings().ingress_port, settings().ingress_max_body_bytes) == (0, 65536)


def test_ingress_flags_reach_the_settings() -> None:
    got = settings(
        "--ingress-port", "8443", "--ingress-tls-cert", "c.pem", "--ingress-tls-key", "k.pem",
        "--ingress-max-body-bytes", "1024",
    )  # fmt: skip
    assert (got.ingress_port, got.ingress_tls_cert, got.ingress_tls_key, got.ingress_max_body_bytes) == (
        8443,
        "c.pem",
        "k.pem",
        1024,
    )


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--ingress-port", "8443"], "needs --ingress-tls-cert and --ingress-tls-key"),
        (["--ingress-port", "8443", "--ingress-tls-cert", "c.pem"], "needs --ingress-tls-cert"),
        (["--dev", "--ingress-port", "8443", "--ingress-tls-key", "k.pem"], "both"),
        (["--dev", "--ingress-port", "8443", "--ingress-max-body-bytes", "0"], "at least 1"),
    ],
)
def test_incomplete_ingress_flags_stop_with_a_message(argv: list[str], says: str) -> None:
    with pytest.raises(SystemExit, match=says):
        settings(*argv)


def test_dev_lets_the_ingress_run_on_a_self_signed_certificate() -> None:
    got = settings("--dev", "--ingress-port", "8443")
    assert got.ingress_port == 8443 and got.ingress_tls_cert is None


async def test_the_gate_runs_a_bounded_number_queues_a_bounded_number_and_refuses_the_rest() -> None:
    gate = PublishGate(running=2, waiting=1)
    release = asyncio.Event()
    entered: list[int] = []

    async def publish(i: int) -> None:
        async with gate.enter():
            entered.append(i)
            await release.wait()

    tasks = [asyncio.create_task(publish(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert entered == [0, 1] and gate.waiting == 1
    with pytest.raises(SinkUnavailable) as info:
        async with gate.enter():
            pass
    assert info.value.retry_after_s == 1
    release.set()
    await asyncio.gather(*tasks)
    assert entered == [0, 1, 2] and gate.waiting == 0
    async with gate.enter():  # free again
        pass
