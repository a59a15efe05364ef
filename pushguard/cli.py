"""`pushguard` and its subcommands.

    pushguard serve   run a node until SIGINT/SIGTERM
    pushguard demo      run a node and scripted logins with simulated phones
    pushguard simulate  drive a node with simulated phones and report
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from pathlib import Path

import trio

from engine.config import Config, ConfigError, Listener, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pushguard",
        description="Push multi-factor authentication engine: phones on websockets, "
                    "backends on msgpack-RPC, push-bombing stopped at the door.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run a node until SIGINT or SIGTERM",
        description="Run a pushguard node on embedded defaults (SQLite in the data directory, "
                    "in-memory shared state) until SIGINT or SIGTERM, then shut down cleanly: "
                    "every phone is closed with 1001 (a websocket close handshake of at most 2 s) "
                    "and the store commits what is queued before it closes.")
    serve.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    serve.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="where the database and the development API key live "
                            "(default: the per-user data directory)")
    serve.add_argument("--ws", metavar="HOST:PORT", help="websocket listener for phones (default 127.0.0.1:8765)")
    serve.add_argument("--rpc", metavar="HOST:PORT", help="msgpack-RPC listener for backends (default 127.0.0.1:7464)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    demo = commands.add_parser(
        "demo", help="run a node with simulated phones through scripted logins",
        description="Start a node on embedded defaults in a fresh ./.demo-data directory, enroll four "
                    "simulated phones through the real enrollment flow, play an approval, a denial, "
                    "a timeout, a push-bombing burst, a step-up and a password reset, print each "
                    "challenge's lifecycle, stop the node and exit 0 if every scenario ended as expected.")
    demo.add_argument("--data-dir", type=Path, default=Path(".demo-data"), metavar="DIR",
                      help="data directory, wiped first (default ./.demo-data)")
    demo.add_argument("--log-level", default="ERROR", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    simulate = commands.add_parser(
        "simulate", help="drive a node with simulated phones and report what it did",
        description="Enroll (or reuse) a fleet of simulated phones, connect them, and drive challenges at a "
                    "target rate (open loop) with a mix of user behaviour and faults on demand; or play the "
                    "push-bombing scenario. Every outcome is checked against the protocol; the report gives "
                    "throughput, latency percentiles, outcomes and faults. Exits 0 when every check passed, "
                    "1 when one did not. Load goes to 127.0.0.0/8 only.")
    from simulator.simulate import add_arguments

    add_arguments(simulate)
    simulate.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def serve_config(args: argparse.Namespace) -> Config:
    config = load_config(args.config, data_dir=args.data_dir)
    replacements = {}
    if args.ws:
        replacements["ws"] = Listener.parse(args.ws, config.ws)
    if args.rpc:
        replacements["rpc"] = Listener.parse(args.rpc, config.rpc)
    return dataclasses.replace(config, **replacements)


async def serve(config: Config) -> None:
    from engine.node import open_node

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_node(config) as node:
            print(f"pushguard node {config.node_id}: phones ws{'s' if config.ws.tls else ''}://"
                  f"{config.ws.host}:{node.ws_port}/v1/device, backends {config.rpc.host}:{node.rpc_port}",
                  flush=True)
            async for signum in signals:
                logging.getLogger("pushguard").info("received %s: shutting down",
                                                    signal.Signals(signum).name)
                break


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        try:
            config = serve_config(args)
        except ConfigError as exc:
            print(f"pushguard: {exc}", file=sys.stderr)
            return 2
        trio.run(serve, config)
        return 0
    if args.command == "demo":
        from simulator.demo import main as demo_main

        return demo_main(args.data_dir)
    if args.command == "simulate":
        from simulator.simulate import main as simulate_main

        return simulate_main(args)
    return 2
