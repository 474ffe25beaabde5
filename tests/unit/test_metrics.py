"""Metrics: series children kept per label set stay in step with removal."""

from __future__ import annotations

from prometheus_client import generate_latest

from webhook_operator.metrics import Metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    value = metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def test_series_of_a_removed_webhook_come_back_fresh_when_it_is_delivered_to_again() -> None:
    metrics = Metrics()
    for _ in range(2):
        metrics.attempt("shop", "hook", "200", 0.01)
        metrics.delivery_final("shop", "hook", "User.Created", True)
    attempts = {"namespace": "shop", "webhook": "hook", "code": "200"}
    assert sample(metrics, "webhook_operator_delivery_attempts_total", **attempts) == 2

    metrics.remove_webhook("shop", "hook")
    assert 'webhook="hook"' not in generate_latest(metrics.registry).decode()

    # A kept child of the removed series would count on unexported: the new series must be exported, from 1.
    metrics.attempt("shop", "hook", "200", 0.01)
    metrics.delivery_final("shop", "hook", "User.Created", True)
    assert sample(metrics, "webhook_operator_delivery_attempts_total", **attempts) == 1
    final = {"namespace": "shop", "webhook": "hook", "event": "User.Created", "outcome": "success"}
    assert sample(metrics, "webhook_operator_deliveries_total", **final) == 1
    duration = {"namespace": "shop", "webhook": "hook"}
    assert sample(metrics, "webhook_operator_delivery_duration_seconds_count", **duration) == 1


def test_a_removed_webhooks_gauges_come_back_fresh_and_exported() -> None:
    metrics = Metrics()
    gauges = metrics.gauges("shop", "hook")
    assert metrics.gauges("shop", "hook") is gauges  # looked up once
    gauges.pending.inc(3)
    gauges.in_flight.inc()
    gauges.ordered_blocked.set(2)
    key = {"namespace": "shop", "webhook": "hook"}
    assert sample(metrics, "webhook_operator_deliveries_pending", **key) == 3

    metrics.remove_webhook("shop", "hook")
    assert 'webhook="hook"' not in generate_latest(metrics.registry).decode()

    # A kept child of the removed series would move unexported: the new one is exported, from 0.
    metrics.gauges("shop", "hook").pending.inc()
    assert sample(metrics, "webhook_operator_deliveries_pending", **key) == 1
    assert sample(metrics, "webhook_operator_deliveries_in_flight", **key) == 0
    assert sample(metrics, "webhook_operator_ordered_blocked", **key) == 0
