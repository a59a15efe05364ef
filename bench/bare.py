"""The reference every benchmark figure is set against: a bare trio-websocket server.

`server` accepts websockets and answers each message with itself: what a
node would be if it did nothing but hold connections and move frames.
`clients` opens N connections to it from loopback source addresses of its
own, reports how long that took, then answers every message it is sent.
`server --push-rate` pushes messages round-robin to its connections for a
while (a window of them in flight) and reports round trips per second and
its own CPU per round trip: the bare twin of a challenge's push and answer.

    python -m bench.bare server --port 0 [--push-seconds S --expect N]
    python -m bench.bare clients --port P --count N

Each prints one JSON line on stdout when it has something to report; the
server prints {"port": P} first. Load stays on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, serve_websocket, wrap_client_stream

from simulator.resources import raise_descriptor_limit, source_addresses

PAYLOAD = b"x" * 200  # about a challenge frame's size in msgpack
WINDOW = 200  # pushes in flight, unless --window says otherwise


def _emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def run_server(port: int, push_seconds: float, expect: int, window: int = WINDOW) -> None:
    raise_descriptor_limit()
    connections: list[WebSocketConnection] = []
    answered = 0
    answer = trio.Event()

    async def handler(request) -> None:
        nonlocal answered, answer
        ws = await request.accept()
        connections.append(ws)
        try:
            while True:
                message = await ws.get_message()
                if push_seconds:
                    answered += 1
                    answer.set()
                else:
                    await ws.send_message(message)
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", port, None,
                                             handler_nursery=nursery, message_queue_size=4))
        _emit(port=server.port)
        if not push_seconds:
            await trio.sleep_forever()
        while len(connections) < expect:
            await trio.sleep(0.05)
        _emit(connected=len(connections))
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        sent = 0
        with trio.move_on_after(push_seconds):
            while True:
                while sent - answered < window:
                    nursery.start_soon(connections[sent % len(connections)].send_message, PAYLOAD)
                    sent += 1
                answer = trio.Event()
                await answer.wait()
        elapsed, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        _emit(round_trips=answered, seconds=round(elapsed, 3), rate=round(answered / elapsed, 1),
              server_cpu_us=round(cpu / max(answered, 1) * 1e6, 1), cpu_percent=round(100 * cpu / elapsed, 1))
        nursery.cancel_scope.cancel()


async def run_clients(port: int, count: int, concurrency: int) -> None:
    _, allowed = raise_descriptor_limit()
    if count > allowed:
        raise SystemExit(f"{count} connections need more descriptors than this process may open ({allowed})")
    addresses = source_addresses(max(1, -(-count // 20_000)), first="127.40.0.1")
    limiter = trio.CapacityLimiter(concurrency)
    opened = 0

    async def one(i: int, nursery: trio.Nursery, task_status=trio.TASK_STATUS_IGNORED) -> None:
        nonlocal opened
        async with limiter:
            stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=addresses[i % len(addresses)])
            ws = await wrap_client_stream(nursery, stream, "127.0.0.1", "/", message_queue_size=4)
            opened += 1
        task_status.started()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except ConnectionClosed:
            pass

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as connecting:
            for i in range(count):
                connecting.start_soon(partial(nursery.start, one, i, nursery))
        _emit(opened=opened, seconds=round(time.perf_counter() - start, 3))
        await trio.sleep_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server")
    server.add_argument("--port", type=int, default=0)
    server.add_argument("--push-seconds", type=float, default=0.0)
    server.add_argument("--expect", type=int, default=1, help="connections to wait for before pushing")
    server.add_argument("--window", type=int, default=WINDOW, help="pushes kept in flight")
    clients = commands.add_parser("clients")
    clients.add_argument("--port", type=int, required=True)
    clients.add_argument("--count", type=int, required=True)
    clients.add_argument("--concurrency", type=int, default=500)
    args = parser.parse_args(argv)
    try:
        if args.command == "server":
            trio.run(run_server, args.port, args.push_seconds, args.expect, args.window)
        else:
            trio.run(run_clients, args.port, args.count, args.concurrency)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
