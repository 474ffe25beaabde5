"""Which redelivery an event asks for: the SPEC's redeliver annotation, or a replay to one webhook."""

from __future__ import annotations

from webhook_operator.delivery.redelivery import REDELIVER, REPLAY, parse_replay, pending_request, replay_value
from webhook_operator.model import REDELIVER_ANNOTATION, REPLAY_ANNOTATION


def meta(**annotations: str) -> dict[str, object]:
    return {"annotations": annotations}


def test_redeliver_unchanged_all_failed_entries() -> None:
    request = pending_request(meta(**{REDELIVER_ANNOTATION: "t1"}), {})
    assert request is not None and request.kind == REDELIVER
    assert request.selects({"webhook": "a", "outcome": "Failed"})
    assert request.selects({"webhook": "b", "outcome": "Failed"})
    assert not request.selects({"webhook": "a", "outcome": "Succeeded"})
    assert pending_request(meta(**{REDELIVER_ANNOTATION: "t1"}), {"redelivery": {"requestedAt": "t1"}}) is None
    assert pending_request(meta(**{REDELIVER_ANNOTATION: "t1"}), {}, handled=("t1",)) is None


def test_replay_selects_one_webhook() -> None:
    value = replay_value("2026-01-01T00:00:00.000000Z", "hook-a", failed_only=False)
    request = pending_request(meta(**{REPLAY_ANNOTATION: value}), {})
    assert request is not None and request.kind == REPLAY and request.webhook == "hook-a"
    assert request.selects({"webhook": "hook-a", "outcome": "Succeeded"})
    assert request.selects({"webhook": "hook-a", "outcome": "Failed"})
    assert not request.selects({"webhook": "hook-b", "outcome": "Failed"})
    assert not request.selects({"webhook": "hook-a", "outcome": "Retrying"})
    failed = parse_replay(replay_value("t", "hook-a", failed_only=True))
    assert failed is not None and failed.failed_only
    assert not failed.selects({"webhook": "hook-a", "outcome": "Succeeded"})
    assert pending_request(meta(**{REPLAY_ANNOTATION: value}), {"replay": {"requestedAt": value}}) is None


def test_redeliver_first_then_replay_and_garbage_ignored() -> None:
    both = meta(**{REDELIVER_ANNOTATION: "t1", REPLAY_ANNOTATION: "t2 hook all"})
    first = pending_request(both, {})
    assert first is not None and first.kind == REDELIVER
    second = pending_request(both, {"redelivery": {"requestedAt": "t1"}})
    assert second is not None and second.kind == REPLAY
    assert pending_request(meta(**{REPLAY_ANNOTATION: "nonsense"}), {}) is None
