"""Configuration files and options, and running the sandbox in-process or as a subprocess."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from campaign.sandbox.__main__ import build_parser, config_from_args
from campaign.sandbox.config import SandboxConfig, parse_latency
from sandbox_helpers import TOKEN, client_for, messages_path, template_message


@pytest.mark.parametrize("text,expected", [("150-250", (150.0, 250.0)), ("0", (0.0, 0.0)), ("200", (200.0, 200.0)),
                                           (" 5 - 10 ", (5.0, 10.0))])
def test_parse_latency(text, expected) -> None:
    assert parse_latency(text) == expected


@pytest.mark.parametrize("text", ["abc", "250-150", "-5", "1-2-3"])
def test_parse_latency_refuses_nonsense(text) -> None:
    with pytest.raises(ValueError):
        parse_latency(text)


def test_defaults_make_a_useful_sandbox(monkeypatch) -> None:
    monkeypatch.setenv("WA_ACCESS_TOKEN", "from-env")
    monkeypatch.setenv("WA_APP_SECRET", "secret-from-env")
    config = SandboxConfig()
    assert (config.mps, config.pair_interval, config.latency_ms, config.transient_rate) == (80, 6.0, (150.0, 250.0), 0.0)
    assert (config.access_token, config.app_secret) == ("from-env", "secret-from-env")
    assert "from-env" not in repr(config)
    names = {(t.name, t.language) for t in config.templates}
    assert {("hello_world", "en_US"), ("order_update", "en_US")} <= names


def test_config_from_toml_file(tmp_path) -> None:
    path = tmp_path / "sandbox.toml"
    path.write_text('mps = 20\nlatency_ms = "0-5"\nnot_on_whatsapp = ["+4915100000001"]\n'
                    'not_on_whatsapp_fraction = 0.1\n\n'
                    '[[templates]]\nname = "promo"\nlanguage = "de"\ncategory = "MARKETING"\n'
                    'components = [{type = "BODY", text = "Hallo {{1}}"}]\n')
    config = SandboxConfig.from_file(path)
    assert (config.mps, config.latency_ms, config.not_on_whatsapp) == (20, (0.0, 5.0), frozenset({"4915100000001"}))
    names = {t.name for t in config.templates}
    assert {"promo", "hello_world"} <= names


def test_config_from_json_file_without_default_templates(tmp_path) -> None:
    path = tmp_path / "sandbox.json"
    path.write_text(json.dumps({"pair_interval": 0, "default_templates": False,
                                "templates": [{"name": "only", "language": "en_US",
                                               "components": [{"type": "BODY", "text": "x"}]}]}))
    config = SandboxConfig.from_file(path)
    assert config.pair_interval == 0.0 and [t.name for t in config.templates] == ["only"]


def test_unknown_config_keys_are_refused(tmp_path) -> None:
    path = tmp_path / "sandbox.json"
    path.write_text(json.dumps({"mpss": 3}))
    with pytest.raises(ValueError, match="mpss"):
        SandboxConfig.from_file(path)


def test_command_line_options_win_over_the_file(tmp_path) -> None:
    path = tmp_path / "sandbox.toml"
    path.write_text("mps = 20\ntransient_rate = 0.5\n")
    args = build_parser().parse_args(["--config", str(path), "--mps", "7", "--latency-ms", "0",
                                      "--webhook-url", "http://127.0.0.1:9/webhook"])
    config = config_from_args(args)
    assert (config.mps, config.transient_rate, config.latency_ms, config.webhook_url) == (
        7, 0.5, (0.0, 0.0), "http://127.0.0.1:9/webhook")


def test_the_in_process_server_exposes_the_live_sandbox(sandbox) -> None:
    assert sandbox.url.startswith("http://127.0.0.1:")
    with client_for(sandbox) as c:
        c.post(messages_path(), json=template_message("+4915100000001"))
    assert sandbox.sandbox.ledger.accepted_count == 1
    assert sandbox.app.state.sandbox is sandbox.sandbox
    sandbox.reset()
    assert sandbox.figures().requests == 0


def test_the_sandbox_runs_as_a_subprocess(tmp_path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, WA_ACCESS_TOKEN=TOKEN)
    process = subprocess.Popen([sys.executable, "-m", "campaign.sandbox", "--port", str(port), "--latency-ms", "0",
                                "--mps", "3"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/_sandbox/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read()
                assert time.monotonic() < deadline, "the sandbox subprocess did not start"
                time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            codes = [c.post(messages_path(), json=template_message(f"+49151{n:08d}")).status_code for n in range(4)]
            assert codes == [200, 200, 200, 400]
            assert c.get("/_sandbox/config").json()["mps"] == 3
    finally:
        process.send_signal(signal.SIGINT)
        # uvicorn shuts down gracefully, then re-raises the signal; Ctrl-C must not print a traceback.
        assert process.wait(10) in (0, -signal.SIGINT)
    stderr = process.stderr.read()
    assert "Traceback" not in stderr and TOKEN not in stderr
