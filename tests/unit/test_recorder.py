"""Kubernetes Events name the pod that acted."""

from __future__ import annotations

import socket

import pytest

from webhook_operator.recorder import event_body

OBJ = {"kind": "Webhook", "metadata": {"name": "hook", "namespace": "shop", "uid": "u1"}}


def test_events_name_the_pod_from_pod_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "webhook-operator-5c7d-abcde")
    event = event_body(OBJ, type_="Normal", reason="KeyRotated", message="done")
    assert event["reportingComponent"] == "webhook-operator"
    assert event["reportingInstance"] == "webhook-operator-5c7d-abcde"
    assert event["source"] == {"component": "webhook-operator", "host": "webhook-operator-5c7d-abcde"}
    assert event["involvedObject"]["uid"] == "u1"


def test_without_pod_name_events_name_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAME", raising=False)
    event = event_body(OBJ, type_="Normal", reason="KeyRotated", message="done")
    assert event["reportingInstance"] == socket.gethostname() == event["source"]["host"]
