"""Leader election decisions (pure): when to take, keep or give up a Lease, and what to write."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from webhook_operator.leader import (
    LEASE_DURATION_S,
    RENEW_DEADLINE_S,
    RETRY_PERIOD_S,
    LeaseRecord,
    default_namespace,
    format_micro_time,
    holder_identity,
    lease_expired,
    may_acquire,
    must_step_down,
    next_record,
    parse_micro_time,
    released_record,
)

WALL = dt.datetime(2026, 12, 6, 4, 0, 0, 123456, tzinfo=dt.UTC)
HELD = LeaseRecord("other_1", 15, "2026-12-06T03:59:00.000000Z", "2026-12-06T03:59:58.000000Z", 2)


def test_timings_are_controller_runtime_defaults_and_a_leader_stops_before_its_lease_can_expire() -> None:
    assert (LEASE_DURATION_S, RENEW_DEADLINE_S, RETRY_PERIOD_S) == (15.0, 10.0, 2.0)
    assert RETRY_PERIOD_S < RENEW_DEADLINE_S < LEASE_DURATION_S


def test_a_missing_lease_or_our_own_is_taken_at_once() -> None:
    assert may_acquire(None, "me_1", observed_at=100.0, now=100.0)
    assert may_acquire(HELD, "other_1", observed_at=100.0, now=100.0)


def test_a_lease_held_by_another_is_left_alone_until_unchanged_for_its_duration_on_our_clock() -> None:
    assert not may_acquire(HELD, "me_1", observed_at=100.0, now=100.0)
    assert not may_acquire(HELD, "me_1", observed_at=100.0, now=114.9)
    assert may_acquire(HELD, "me_1", observed_at=100.0, now=115.0)


def test_expiry_never_compares_the_holders_renew_time_with_our_clock() -> None:
    # A renewTime from long ago (or a skewed clock) does not matter: only how long we have seen no change.
    stale = LeaseRecord("other_1", 15, "2000-01-01T00:00:00.000000Z", "2000-01-01T00:00:00.000000Z", 0)
    assert not lease_expired(stale, observed_at=100.0, now=101.0)


def test_a_released_lease_is_taken_at_once() -> None:
    released = released_record(HELD, WALL)
    assert released.holder == "" and released.lease_duration_s == 1 and released.transitions == 2
    assert may_acquire(released, "me_1", observed_at=100.0, now=100.0)
    assert released.to_spec()["holderIdentity"] is None


def test_renewing_keeps_acquire_time_and_transitions() -> None:
    renewed = next_record(HELD, "other_1", 15.0, WALL)
    assert renewed.holder == "other_1"
    assert renewed.acquire_time == HELD.acquire_time
    assert renewed.renew_time == "2026-12-06T04:00:00.123456Z"
    assert renewed.transitions == 2


def test_taking_over_counts_a_transition_and_a_new_lease_starts_at_zero() -> None:
    taken = next_record(HELD, "me_1", 15.0, WALL)
    assert (taken.holder, taken.transitions, taken.lease_duration_s) == ("me_1", 3, 15)
    assert taken.acquire_time == taken.renew_time == "2026-12-06T04:00:00.123456Z"
    assert next_record(None, "me_1", 15.0, WALL).transitions == 0
    # Taking a released (holder-less) Lease is not a transition from anyone.
    assert next_record(released_record(HELD, WALL), "me_1", 15.0, WALL).transitions == 2


def test_a_leader_steps_down_when_it_has_not_renewed_for_the_renew_deadline() -> None:
    assert not must_step_down(last_renewed=100.0, now=109.9, renew_deadline_s=10.0)
    assert must_step_down(last_renewed=100.0, now=110.0, renew_deadline_s=10.0)


def test_lease_spec_round_trips() -> None:
    spec = next_record(None, "me_1", 15.0, WALL).to_spec()
    assert spec == {
        "holderIdentity": "me_1",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-12-06T04:00:00.123456Z",
        "renewTime": "2026-12-06T04:00:00.123456Z",
        "leaseTransitions": 0,
    }
    assert LeaseRecord.from_lease({"spec": spec}) == next_record(None, "me_1", 15.0, WALL)
    assert LeaseRecord.from_lease({"metadata": {}}) == LeaseRecord()


def test_micro_time_is_rfc3339_with_microseconds_in_utc() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert format_micro_time(dt.datetime(2026, 1, 2, 5, 4, 5, 7, tzinfo=plus_two)) == "2026-01-02T03:04:05.000007Z"
    assert parse_micro_time("2026-01-02T03:04:05.000007Z") == dt.datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=dt.UTC)
    assert parse_micro_time("nonsense") is None and parse_micro_time(None) is None


def test_identity_is_the_pod_name_with_a_random_suffix() -> None:
    first, second = holder_identity({"POD_NAME": "op-7f9c"}), holder_identity({"POD_NAME": "op-7f9c"})
    assert first.startswith("op-7f9c_") and second.startswith("op-7f9c_") and first != second
    assert len(holder_identity({})) > len("_") + 8  # the hostname, when there is no POD_NAME


def test_lease_namespace_defaults_to_the_pods_then_the_service_accounts_then_default(tmp_path: Path) -> None:
    namespace_file = tmp_path / "namespace"
    assert default_namespace({"POD_NAMESPACE": "ops"}, namespace_file) == "ops"
    assert default_namespace({}, namespace_file) == "default"
    namespace_file.write_text("webhooks\n")
    assert default_namespace({}, namespace_file) == "webhooks"
