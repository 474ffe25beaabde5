"""The process's name never comes from the passwd database (the image's uid 65532 has no entry)."""

from __future__ import annotations

import getpass
import socket

import pytest

from webhook_operator.identity import instance_name


def test_pod_name_wins() -> None:
    assert (
        instance_name({"POD_NAME": "webhook-operator-7d9f-abcde", "HOSTNAME": "other"}) == "webhook-operator-7d9f-abcde"
    )


def test_without_pod_name_the_host_name_serves_and_the_user_name_is_never_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_passwd_entry() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(getpass, "getuser", no_passwd_entry)
    assert instance_name({}) == socket.gethostname()
    assert instance_name({"HOSTNAME": "container-id"}) == "container-id"
