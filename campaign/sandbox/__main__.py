"""``python -m campaign.sandbox``: the emulator as its own process (benchmarks, subprocess tests).

Options mirror ``campaign sandbox`` (INTERFACE.md); a config file gives the rest, options win.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from campaign.sandbox.config import SandboxConfig, parse_latency
from campaign.sandbox.server import serve


def build_parser() -> argparse.ArgumentParser:
    """The command line; every option defaults to None so a config file's value survives."""
    parser = argparse.ArgumentParser(prog="python -m campaign.sandbox",
                                     description="A local emulator of the WhatsApp Cloud API and its webhooks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8555)
    parser.add_argument("--config", metavar="FILE", help="JSON or TOML file of sandbox settings")
    parser.add_argument("--webhook-url", help="where to POST signed webhooks")
    parser.add_argument("--mps", type=int, help="messages per second per sender number (default 80)")
    parser.add_argument("--pair-interval", type=float, help="seconds between two messages to one user (default 6)")
    parser.add_argument("--latency-ms", type=parse_latency, help='answer delay, "150-250" or "0"')
    parser.add_argument("--transient-rate", type=float, help="share of sends failing with 500/131000 or 503/2")
    parser.add_argument("--waba-id", help="the WhatsApp Business Account id templates are listed under")
    parser.add_argument("--seed", type=int, help="make latency, faults and webhook fates repeatable")
    parser.add_argument("--log-level", default="INFO", help="level of the campaign.sandbox logger (DEBUG: one line per request)")
    return parser


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    """The file's settings (or the defaults) with the given options applied over them."""
    names = ("webhook_url", "mps", "pair_interval", "latency_ms", "transient_rate", "waba_id", "seed")
    return SandboxConfig.from_options(args.config, **{name: getattr(args, name) for name in names})


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, run the sandbox until interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("campaign.sandbox").setLevel(args.log_level.upper())
    try:
        config = config_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    serve(config, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
