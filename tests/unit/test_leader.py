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
    observe,
    parse_micro_time,
    released_record,
    resumes_term,
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


def test_the_expiry_clock_runs_while_the_record_is_unchanged_and_restarts_on_a_change() -> None:
    assert observe(HELD, HELD, 100.0, 110.0) == (HELD, 100.0)
    renewed = next_record(HELD, "other_1", 15.0, WALL)
    assert observe(renewed, HELD, 100.0, 110.0) == (renewed, 110.0)
    assert observe(None, HELD, 100.0, 110.0) == (None, 110.0)


def test_time_the_lease_could_not_be_read_does_not_count_towards_its_expiry() -> None:
    # An API-server outage: we saw HELD from 100, read it last at 101, could not read it until 161.
    # The holder could not renew either: its silence then proves nothing, so 60 s are not counted.
    observed, observed_at = observe(HELD, HELD, 100.0, 161.0, unseen_s=161.0 - 101.0)
    assert (observed, observed_at) == (HELD, 160.0)
    assert not may_acquire(observed, "me_1", observed_at, now=161.0)
    assert not may_acquire(observed, "me_1", observed_at, now=174.9)
    assert may_acquire(observed, "me_1", observed_at, now=175.0)  # the holder is really gone
    # One failed read of a flaky API server costs a take-over only the time it left us blind.
    assert observe(HELD, HELD, 100.0, 112.0, unseen_s=4.0) == (HELD, 104.0)
    # Never later than now, whatever the figures.
    assert observe(HELD, HELD, 100.0, 110.0, unseen_s=60.0) == (HELD, 110.0)


def test_a_term_resumes_only_while_the_lease_still_names_us() -> None:
    assert resumes_term(HELD, "other_1")
    assert not resumes_term(HELD, "me_1")  # someone else has taken it since
    assert not resumes_term(released_record(HELD, WALL), "other_1")  # released: a new term
    assert not resumes_term(None, "other_1")


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
