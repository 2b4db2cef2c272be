"""Fixtures for the sandbox's tests: a running sandbox, a client, a webhook receiver."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from campaign.sandbox.config import SandboxConfig
from campaign.sandbox.server import SandboxServer

sys.path.insert(0, str(Path(__file__).parent))  # sandbox_helpers, whatever pytest's import mode

from sandbox_helpers import FAST, Receiver, client_for  # noqa: E402


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    with receiver.server:
        yield receiver


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., SandboxServer]]:
    """Start a sandbox with the fast test settings plus ``overrides``; all stop at teardown."""
    started: list[SandboxServer] = []

    def make(**overrides: Any) -> SandboxServer:
        server = SandboxServer(SandboxConfig(**{**FAST, **overrides}))
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def sandbox(make_sandbox: Callable[..., SandboxServer]) -> SandboxServer:
    """A sandbox with the fast test settings and no webhooks."""
    return make_sandbox()


@pytest.fixture
def client(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with client_for(sandbox) as c:
        yield c
