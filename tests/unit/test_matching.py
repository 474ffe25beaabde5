"""Event names, subscription patterns and the events test payloads use."""

from __future__ import annotations

import pytest

from webhook_operator.matching import (
    EVENT_NAME_RE,
    is_event_name,
    is_event_pattern,
    pattern_matches,
    sample_event_for,
    subscribes,
)


@pytest.mark.parametrize(
    "name",
    ["User", "User.Created", "User.Data.Updated", "a", "A1.b2.C3", "Organization.Membership.Updated", "x9"],
)
def test_valid_event_names_are_accepted(name: str) -> None:
    assert is_event_name(name)
    assert is_event_pattern(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "User.",
        ".User",
        "User..Created",
        "1User",
        "User.1Created",
        "User-Created",
        "User_Created",
        "User Created",
        "User.*",
        "*",
        "User.Created\n",
        "Ü.Created",
    ],
)
def test_malformed_event_names_are_rejected(name: str) -> None:
    assert not is_event_name(name)


def test_the_regex_is_the_contract_pattern() -> None:
    assert EVENT_NAME_RE.pattern == r"^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*$"


@pytest.mark.parametrize("pattern", ["*", "User.*", "User.Data.*", "User.Created"])
def test_wildcards_are_valid_patterns(pattern: str) -> None:
    assert is_event_pattern(pattern)


@pytest.mark.parametrize(
    "pattern", ["", "**", ".*", "User*", "User.**", "*.Created", "User.*.Created", "User.* ", "*.*"]
)
def test_malformed_patterns_are_rejected(pattern: str) -> None:
    assert not is_event_pattern(pattern)


@pytest.mark.parametrize(
    ("pattern", "event", "expected"),
    [
        ("*", "User.Created", True),
        ("*", "Anything", True),
        ("User.Created", "User.Created", True),
        ("User.Created", "User.Deleted", False),
        ("User.Created", "user.created", False),
        ("User.Created", "User.Created.Extra", False),
        ("User.*", "User.Created", True),
        ("User.*", "User.Data.Updated", True),
        ("User.*", "User", False),
        ("User.*", "UserX.Created", False),
        ("User.*", "user.Created", False),
        ("User.*", "Organization.User.Created", False),
        ("User.Data.*", "User.Data.Updated", True),
        ("User.Data.*", "User.Created", False),
    ],
)
def test_pattern_matches(pattern: str, event: str, expected: bool) -> None:
    assert pattern_matches(pattern, event) is expected


def test_a_webhook_subscribes_when_any_entry_matches() -> None:
    patterns = ["User.Created", "Organization.*"]
    assert subscribes(patterns, "User.Created")
    assert subscribes(patterns, "Organization.Membership.Updated")
    assert not subscribes(patterns, "User.Deleted")
    assert not subscribes([], "User.Created")
    assert subscribes(iter(["*"]), "Role.Created")


@pytest.mark.parametrize(
    ("pattern", "sample"),
    [
        ("User.Created", "User.Created"),
        ("User.*", "User.Test"),
        ("User.Data.*", "User.Data.Test"),
        ("*", "Webhook.Test"),
    ],
)
def test_sample_event_for_each_entry(pattern: str, sample: str) -> None:
    assert sample_event_for(pattern) == sample
    assert is_event_name(sample)
    assert pattern_matches(pattern, sample)
