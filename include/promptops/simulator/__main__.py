"""``python -m promptops.simulator``: serve the platform API, print its truth or its records,
or run a Slack webhook sink. See docs/simulator.md.

Data attribution: token counts come from the Azure LLM inference trace 2023 (Patel et al.,
"Splitwise: Efficient generative LLM inference using phase splitting", ISCA 2024, CC-BY 4.0).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from promptops.simulator.config import SimConfig
from promptops.simulator.faults import parse_rules
from promptops.simulator.platform import Platform
from promptops.simulator.scenario import ScenarioError
from promptops.simulator.timeutil import SimClock, parse_rfc3339


def _ts(value: str) -> datetime:
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _faults_arg(value: str) -> list[Any]:
    """Inline JSON, or a path to a JSON/YAML file."""
    text = value
    if not value.lstrip().startswith(("[", "{")):
        path = Path(value)
        if not path.exists():
            raise argparse.ArgumentTypeError(f"{value}: neither JSON nor an existing file")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return parse_rules(yaml.safe_load(text))
    try:
        return parse_rules(json.loads(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--faults: {exc}") from None


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", type=Path, help="scenario YAML (incidents, data faults, faults)")
    p.add_argument("--seed", type=int, help="random seed (default 42, or the scenario's)")
    p.add_argument("--calls-per-hour", type=int, help="mean calls per hour (default 6000)")
    p.add_argument("--flat", action="store_true", default=None,
                   help="no seasonality: every hour has exactly --calls-per-hour calls")
    p.add_argument("--malformed-rate", type=float, help="share of malformed records")
    p.add_argument("--duplicate-rate", type=float, help="share of records written twice")
    p.add_argument("--late-rate", type=float, help="share of records 2-10 minutes late")
    p.add_argument("--now", type=_ts, help="start the simulated clock at this RFC 3339 time")


def _config(args: argparse.Namespace, **extra: Any) -> SimConfig:
    return SimConfig.build(
        args.scenario, seed=args.seed, calls_per_hour=args.calls_per_hour, flat=args.flat,
        malformed_rate=args.malformed_rate, duplicate_rate=args.duplicate_rate,
        late_rate=args.late_rate, **extra)


def _platform(args: argparse.Namespace, **extra: Any) -> Platform:
    clock = SimClock(args.now)
    return Platform(_config(args, **extra), clock)


def cmd_serve(args: argparse.Namespace) -> int:
    from promptops.simulator.server import SimulatorServer, serve_forever

    api_key = args.api_key or os.environ.get("PROMPT_API_KEY") or "dev-key"
    ro_key = args.read_only_key or os.environ.get("PROMPT_READ_ONLY_API_KEY") or None
    platform = _platform(args, extra_faults=args.faults,
                         action_duration_s=args.action_duration_s, state_file=args.state_file)
    server = SimulatorServer(args.host, args.port, platform, api_key, ro_key,
                             faults=platform.config.faults,
                             allow_remote_control=args.allow_remote_control)
    if args.slack_sink_port is not None:
        from promptops.simulator.slack_sink import start_in_thread

        sink = start_in_thread(args.host, args.slack_sink_port)
        print(f"slack sink listening on {sink.url}", flush=True)
    # SIGTERM (SimulatorProcess.stop, docker stop) shuts down like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"promptops simulator listening on {server.url}", flush=True)
    serve_forever(server)
    return 0


def cmd_truth(args: argparse.Namespace) -> int:
    sys.stdout.buffer.write(orjson.dumps(_platform(args).truth(), option=orjson.OPT_INDENT_2))
    sys.stdout.write("\n")
    return 0


def cmd_records(args: argparse.Namespace) -> int:
    platform = _platform(args)
    out = sys.stdout.buffer
    for rec in platform.records(args.start, args.end):
        out.write(orjson.dumps(rec) + b"\n")
    return 0


def cmd_slack_sink(args: argparse.Namespace) -> int:
    from promptops.simulator.server import serve_forever
    from promptops.simulator.slack_sink import SlackSinkServer

    server = SlackSinkServer(args.host, args.port, args.store)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"slack sink listening on {server.url}", flush=True)
    serve_forever(server)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptops-simulator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve the platform API over HTTP")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8700, help="0 picks a free port")
    _add_generation_flags(p)
    p.add_argument("--api-key", help="full-access key (default: $PROMPT_API_KEY, else dev-key)")
    p.add_argument("--read-only-key",
                   help="a key that may GET but not POST actions ($PROMPT_READ_ONLY_API_KEY)")
    p.add_argument("--faults", type=_faults_arg, help="fault rules: JSON list or a file")
    p.add_argument("--action-duration-s", type=float, default=5.0,
                   help="wall seconds from accepted to succeeded (default 5)")
    p.add_argument("--state-file", type=Path, help="persist ops actions here (JSON)")
    p.add_argument("--slack-sink-port", type=int, help="also run a Slack webhook sink here")
    p.add_argument("--allow-remote-control", action="store_true",
                   help="let non-loopback clients use /_sim (e.g. inside docker compose)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("truth", help="print the scenario's ground truth as JSON")
    _add_generation_flags(p)
    p.set_defaults(func=cmd_truth)

    p = sub.add_parser("records", help="print a window's served records as NDJSON")
    p.add_argument("--start", type=_ts, required=True)
    p.add_argument("--end", type=_ts, required=True)
    _add_generation_flags(p)
    p.set_defaults(func=cmd_records)

    p = sub.add_parser("slack-sink", help="a Slack-compatible incoming-webhook sink")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8701, help="0 picks a free port")
    p.add_argument("--store", type=Path, help="also append every message to this JSONL file")
    p.set_defaults(func=cmd_slack_sink)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ScenarioError as exc:
        print(f"scenario error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # pydantic validation of flags
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
