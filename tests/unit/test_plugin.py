"""`kubectl webhooks` pieces that need no cluster: the log table and error messages."""

from __future__ import annotations

import datetime as dt

from kubernetes.client.exceptions import ApiException

from webhook_operator.plugin import _explain, build_parser, bus_settings, log_rows, table


def _event(name: str, when: str, *entries: dict[str, object]) -> dict[str, object]:
    return {
        "metadata": {"name": name, "creationTimestamp": when},
        "spec": {"event": "User.Created"},
        "status": {"deliveries": list(entries)},
    }


def test_log_rows_are_newest_first_filtered_by_webhook_window_and_outcome() -> None:
    events = [
        _event(
            "old",
            "2026-11-26T00:00:00Z",
            {"webhook": "a", "outcome": "Succeeded", "lastAttemptTime": "2026-11-26T00:00:00Z"},
        ),
        _event(
            "e1",
            "2026-11-28T01:00:00Z",
            {"webhook": "a", "outcome": "Succeeded", "lastAttemptTime": "2026-11-28T01:00:00Z"},
        ),
        _event(
            "e2",
            "2026-11-28T02:00:00Z",
            {
                "webhook": "a",
                "outcome": "Failed",
                "lastAttemptTime": "2026-11-28T02:00:00Z",
                "error": "HTTP 500",
                "statusCode": 500,
                "attempts": 4,
            },
        ),
        _event("other", "2026-11-28T02:00:00Z", {"webhook": "b", "outcome": "Failed"}),
    ]
    since = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    assert [r[2] for r in log_rows(events, "a", since, failed_only=False)] == ["e2", "e1"]
    assert [r[2] for r in log_rows(events, "a", since, failed_only=True)] == ["e2"]
    assert log_rows(events, "a", since, failed_only=True)[0][4:6] == [4, 500]


def test_table_aligns_columns() -> None:
    assert table(["A", "BB"], [["xxx", 1]]).splitlines() == ["A     BB", "xxx   1"]


def test_missing_crd_says_to_install_the_crds() -> None:
    exc = ApiException(status=404, reason="Not Found")
    exc.body = '{"message": "the server could not find the requested resource"}'
    assert "kubectl apply -f crds/" in str(_explain(exc, "Webhook", "x", "ns"))


def test_missing_object_names_it() -> None:
    exc = ApiException(status=404, reason="Not Found")
    exc.body = '{"message": "webhooks.webhook-operator.io \\"x\\" not found"}'
    assert str(_explain(exc, "Webhook", "x", "ns")) == 'Webhook "x" not found in namespace "ns"'


def test_bus_mode_flags_of_the_plugin_reach_the_same_connection_settings_as_the_operators() -> None:
    args = build_parser().parse_args(
        ["logs", "hook", "--event-bus", "nats://127.0.0.1:4222", "--event-bus-token-file", "/run/nats/token",
         "--event-bus-tls-ca", "/run/nats/ca.crt"]
    )  # fmt: skip
    bus = bus_settings(args)
    assert bus is not None
    assert (bus.servers, bus.token_file, bus.tls_ca) == (
        ("nats://127.0.0.1:4222",),
        "/run/nats/token",
        "/run/nats/ca.crt",
    )
