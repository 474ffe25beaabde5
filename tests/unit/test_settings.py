"""Operator flags: durations, --dev, --allow-cidr and the frozen Settings they produce."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import pytest

from webhook_operator.settings import Settings, add_run_arguments, parse_duration, settings_from_args


def settings(*argv: str) -> Settings:
    parser = argparse.ArgumentParser(prog="webhook-operator run")
    add_run_arguments(parser)
    return settings_from_args(parser.parse_args(list(argv)))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("24h", 86400.0),
        ("1h30m", 5400.0),
        ("90s", 90.0),
        ("500ms", 0.5),
        ("1.5s", 1.5),
        ("2d", 172800.0),
        ("1m0.5s", 60.5),
        ("0", 0.0),
        ("45", 45.0),
        ("0.25", 0.25),
        (" 3s ", 3.0),
    ],
)
def test_durations_read_go_style_units_and_bare_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "5 m", "-1s", "1h 30m", "h", "1.s", "s5", "1e3"])
def test_a_bad_duration_says_what_would_be_accepted(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"invalid duration .*e\.g\. 24h"):
        parse_duration(text)


def test_a_bad_duration_flag_stops_with_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        settings("--event-ttl", "a day")
    assert exited.value.code == 2
    assert "invalid duration 'a day'" in capsys.readouterr().err


def test_defaults_are_the_documented_ones() -> None:
    got = settings()
    assert got == Settings()
    assert (got.metrics_port, got.health_port) == (8080, 8081)
    assert (got.event_ttl_s, got.failed_event_ttl_s, got.max_completed_events) == (900.0, 86400.0, 1000)
    assert got.key_rotation_overlap_s == 86400.0
    assert got.namespaces == ()
    assert got.allow_http is False
    assert got.destination_policy.allow_cidrs == ()


def test_flags_reach_the_settings() -> None:
    got = settings(
        "--namespace", "shop", "--namespace", "billing", "--namespace", "shop",
        "--event-ttl", "0", "--key-rotation-overlap", "3s", "--allow-http",
        "--allow-cidr", "10.0.0.0/8", "--ca-bundle", "/etc/ca.pem", "--max-concurrency", "7",
        "--failed-event-ttl", "7d", "--max-completed-events", "0",
    )  # fmt: skip
    assert (got.failed_event_ttl_s, got.max_completed_events) == (7 * 86400.0, 0)
    assert got.namespaces == ("shop", "billing")  # repeated namespaces are watched once, in order
    assert got.event_ttl_s == 0.0
    assert got.key_rotation_overlap_s == 3.0
    assert got.allow_http is True
    assert got.destination_policy.allow_cidrs == (ipaddress.ip_network("10.0.0.0/8"),)
    assert (got.ca_bundle, got.max_concurrency) == ("/etc/ca.pem", 7)


def test_dev_means_allow_http_and_loopback_on_both_address_families() -> None:
    dev = settings("--dev")
    assert dev.allow_http is True
    assert set(dev.destination_policy.allow_cidrs) == {
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    }
    policy = dev.destination_policy
    assert policy.check_ip(ipaddress.ip_address("127.0.0.1")) is None
    assert policy.check_ip(ipaddress.ip_address("::1")) is None
    assert policy.check_ip(ipaddress.ip_address("10.0.0.1")) is not None  # --dev opens loopback only
    assert policy.check_ip(ipaddress.ip_address("169.254.169.254")) is not None


def test_dev_adds_to_explicit_cidrs_without_duplicates() -> None:
    got = settings("--dev", "--allow-cidr", "127.0.0.0/8", "--allow-cidr", "192.168.1.0/24")
    assert got.destination_policy.allow_cidrs == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("192.168.1.0/24"),
        ipaddress.ip_network("::1/128"),
    )


def test_allow_cidr_accepts_host_bits_and_single_addresses() -> None:
    got = settings("--allow-cidr", "192.168.1.20/24", "--allow-cidr", "fd00::1")
    assert got.destination_policy.allow_cidrs == (
        ipaddress.ip_network("192.168.1.0/24"),
        ipaddress.ip_network("fd00::1/128"),
    )


@pytest.mark.parametrize("cidr", ["10.0.0.0/33", "not-a-range", "10.0.0/8x", ""])
def test_a_bad_cidr_stops_with_a_clear_message(cidr: str) -> None:
    with pytest.raises(SystemExit) as exited:
        settings("--allow-cidr", cidr)
    message = str(exited.value.code)
    assert message.startswith("error: --allow-cidr")
    assert repr(cidr) in message
    assert "CIDR notation such as 10.0.0.0/8" in message


@pytest.mark.parametrize("flag", ["--max-concurrency", "--per-webhook-concurrency"])
def test_concurrency_below_one_is_refused(flag: str) -> None:
    with pytest.raises(SystemExit, match="must be at least 1"):
        settings(flag, "0")


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        settings().allow_http = True  # type: ignore[misc]


def test_a_negative_completed_events_cap_is_refused() -> None:
    with pytest.raises(SystemExit, match="--max-completed-events"):
        settings("--max-completed-events", "-1")


def test_leader_election_is_on_by_default_with_the_documented_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setattr("webhook_operator.leader.SERVICE_ACCOUNT_NAMESPACE", Path("/nonexistent/namespace"))
    defaults = settings()
    assert defaults.leader_election is True
    assert defaults.leader_election_id == "webhook-operator"
    assert defaults.leader_election_namespace == "default"
    assert defaults.shutdown_grace_s == 20.0


def test_leader_election_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "ops")
    assert settings().leader_election_namespace == "ops"
    chosen = settings(
        "--no-leader-election",
        "--leader-election-namespace",
        "hooks",
        "--leader-election-id",
        "wo.lock",
        "--shutdown-grace",
        "45s",
    )
    assert (chosen.leader_election, chosen.leader_election_namespace, chosen.leader_election_id) == (
        False,
        "hooks",
        "wo.lock",
    )
    assert chosen.shutdown_grace_s == 45.0


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--leader-election-id", "Webhook_Operator"),
        ("--leader-election-id", ""),
        ("--leader-election-namespace", "a.b"),
    ],
)
def test_a_bad_lease_name_or_namespace_is_refused_naming_the_flag(flag: str, value: str) -> None:
    with pytest.raises(SystemExit, match=flag):
        settings(flag, value)
