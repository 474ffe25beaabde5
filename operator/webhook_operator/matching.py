"""Event names and the subscription patterns of `Webhook.spec.events`: `*`, exact names, `Prefix.*`."""

from __future__ import annotations

import re
from collections.abc import Iterable

EVENT_NAME_RE: re.Pattern[str] = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*$")

WILDCARD_ALL = "*"
WILDCARD_SUFFIX = ".*"
TEST_EVENT_LEAF = "Test"
TEST_EVENT_FOR_ALL = "Webhook.Test"


def is_event_name(name: str) -> bool:
    """True for a concrete event name such as `User.Created` (no wildcards)."""
    # fullmatch, because `$` would also accept a trailing newline.
    return EVENT_NAME_RE.fullmatch(name) is not None


def is_event_pattern(pattern: str) -> bool:
    """True for a valid `spec.events` entry: `*`, an event name, or an event name followed by `.*`."""
    if pattern == WILDCARD_ALL:
        return True
    if pattern.endswith(WILDCARD_SUFFIX):
        return is_event_name(pattern[: -len(WILDCARD_SUFFIX)])
    return is_event_name(pattern)


def pattern_matches(pattern: str, event: str) -> bool:
    """Whether one subscription entry selects `event`; case-sensitive, `Prefix.*` needs at least one more segment."""
    if pattern == WILDCARD_ALL:
        return True
    if pattern.endswith(WILDCARD_SUFFIX):
        # Keep the dot in the prefix so `User.*` does not select `UserX.Created` or `User` itself.
        return event.startswith(pattern[:-1]) and len(event) > len(pattern) - 1
    return pattern == event


def subscribes(patterns: Iterable[str], event: str) -> bool:
    """Whether any of a webhook's entries selects `event`."""
    return any(pattern_matches(pattern, event) for pattern in patterns)


def sample_event_for(pattern: str) -> str:
    """The event name a test payload uses for one subscription entry."""
    if pattern == WILDCARD_ALL:
        return TEST_EVENT_FOR_ALL
    if pattern.endswith(WILDCARD_SUFFIX):
        return pattern[: -len(WILDCARD_SUFFIX)] + "." + TEST_EVENT_LEAF
    return pattern
