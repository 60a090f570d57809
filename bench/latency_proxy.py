"""A loopback TCP forwarder to Azurite that delays every byte by half a round trip each way: a stand-in
for the network between a Functions instance and its storage account, which loopback does not have.

    python -m bench.latency_proxy --target-port 10002 --rtt-ms 2   # prints its own port, then serves

`bench.run --rtt-ms N` starts it as a process of its own (so its work never takes the benchmark
process's GIL) and points both sides, handler and raw, at it. Each chunk is held until half the round
trip after it arrived, in order, and bandwidth is not limited: what a round trip costs is added, as
on a network, and what the client does meanwhile (the parallel index writes) can overlap it. Threads
and `time.sleep`, not asyncio: an event loop waits in whole milliseconds, a sleep to within tens of
microseconds. The bench measures what the proxy really adds and prints it beside what was asked.
"""

from __future__ import annotations

import argparse
import queue
import socket
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start(target_port: int, rtt_ms: float) -> tuple[subprocess.Popen[str], int]:
    """This forwarder as a process of its own in front of `target_port`, and the port it listens on."""
    command = [sys.executable, "-m", "bench.latency_proxy", "--target-port", str(target_port), "--rtt-ms", str(rtt_ms)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def _forward(source: socket.socket, target: socket.socket, hold: float) -> None:
    """Copy `source` to `target`, each chunk `hold` seconds after it arrived; close both at the end."""
    held: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def deliver() -> None:
        with suppress(OSError):
            while data := (item := held.get())[1]:
                time.sleep(max(item[0] - time.monotonic(), 0))
                target.sendall(data)
        for sock in (source, target):  # either side's end ends the connection, both ways
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    threading.Thread(target=deliver, daemon=True).start()
    with suppress(OSError):
        while data := source.recv(65536):
            held.put((time.monotonic() + hold, data))
    held.put((0.0, b""))  # the end of the stream, after what is still held


def _serve(client: socket.socket, target_port: int, hold: float) -> None:
    try:
        upstream = socket.create_connection(("127.0.0.1", target_port))
    except OSError:
        client.close()
        return
    for sock in (client, upstream):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=_forward, args=(client, upstream, hold), daemon=True).start()
    _forward(upstream, client, hold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--rtt-ms", type=float, required=True, help="round trip added, split evenly each way")
    options = parser.parse_args()
    hold = options.rtt_ms / 2000
    listener = socket.create_server(("127.0.0.1", 0))
    sys.stdout.write(f"{listener.getsockname()[1]}\n")
    sys.stdout.flush()
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_serve, args=(client, options.target_port, hold), daemon=True).start()


if __name__ == "__main__":
    main()
