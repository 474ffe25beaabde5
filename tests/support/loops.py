"""Both event loops for tests of code the operator runs on uvloop (its own sockets and TLS transport)
and a library user may run on the stock loop. A test module takes them with
``from tests.support.loops import event_loop_policy  # noqa: F401``."""

from __future__ import annotations

import asyncio

import pytest
import uvloop


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()
