"""The auto-disable decision after one attempt (pure)."""

from __future__ import annotations

import datetime as dt

from webhook_operator.webhooks import auto_disable_decision, auto_disable_from_status, auto_disable_patch

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def after(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_a_first_failure_starts_the_streak_and_a_success_ends_it() -> None:
    failing = auto_disable_decision({}, succeeded=False, status_code=500, after_s=60, now=T0)
    assert failing.auto_disable == {"failingSince": "2026-01-01T00:00:00Z"} and failing.suspend is None
    ok = auto_disable_decision(failing.auto_disable, succeeded=True, status_code=200, after_s=60, now=after(30))
    assert ok.auto_disable == {} and ok.suspend is None


def test_failing_for_after_s_suspends_and_not_before() -> None:
    state = {"failingSince": "2026-01-01T00:00:00Z"}
    early = auto_disable_decision(state, succeeded=False, status_code=None, after_s=60, now=after(59))
    assert early.suspend is None and early.auto_disable == state
    late = auto_disable_decision(state, succeeded=False, status_code=503, after_s=60, now=after(60))
    assert late.suspend is not None and late.suspend[0] == "FailingTooLong"
    assert "2026-01-01T00:00:00Z" in late.suspend[1]


def test_a_410_suspends_at_once() -> None:
    decision = auto_disable_decision({}, succeeded=False, status_code=410, after_s=3600, now=T0)
    assert decision.suspend == ("Gone", "the receiver answered 410 Gone")


def test_zero_never_suspends_not_even_on_410() -> None:
    state = {"failingSince": "2025-01-01T00:00:00Z"}
    assert auto_disable_decision(state, succeeded=False, status_code=410, after_s=0, now=T0).suspend is None


def test_the_status_patch_removes_absent_fields_and_reads_back_equal() -> None:
    patch = auto_disable_patch({"resumeRequestedAt": "x"})
    assert patch["disabledAt"] is None and patch["resumeRequestedAt"] == "x"
    assert auto_disable_from_status(patch) == {"resumeRequestedAt": "x"}
    assert auto_disable_from_status("junk") == {}
