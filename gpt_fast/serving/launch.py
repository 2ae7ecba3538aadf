"""Running the app under uvicorn: `gpt-fast serve` (uvicorn on a thread, the engine on the main thread) or on a
background thread bound to an ephemeral loopback port (tests, benchmarks/bench_serve.py)."""

from __future__ import annotations

import signal
import socket
import threading
import time

import uvicorn


def serve_forever(app, engine, host: str, port: int, log_level: str = "info") -> None:
    """Serves until Ctrl-C or SIGTERM: the HTTP server on a thread, the engine's loop on this thread, the one that
    loaded the model (the app must be built with start_engine=False; why: gpt_fast/serving/engine.py). Raises
    RuntimeError when the server cannot start (the port taken, say); uvicorn logs the reason."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=5))

    def http() -> None:
        try:
            server.run()
        except SystemExit:  # how uvicorn ends when it cannot start; it has logged why
            pass
        finally:  # the server failed to start or stopped: so does the engine
            engine.stop()

    thread = threading.Thread(target=http, name="gpt-fast-http", daemon=True)

    def start_http() -> None:  # once the engine takes requests
        thread.start()
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"gpt-fast serve: the HTTP server could not start on {host}:{port}")
            time.sleep(0.05)

    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM ends it as Ctrl-C does
    try:
        engine.run(on_start=start_http)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        engine.stop()
        server.should_exit = True
        if thread.is_alive():
            thread.join(10)


class BackgroundServer:
    """The app served on 127.0.0.1 at a free port from a thread; `url` is its base URL. A context manager."""

    def __init__(self, app, start_timeout: float = 30.0):
        # IPPROTO_TCP said outright: asyncio sets TCP_NODELAY only on sockets whose proto is TCP (uvicorn's own
        # host/port sockets are), and without it each streamed token waited ~40 ms for the client's delayed ACK.
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True,
                                       name="gpt-fast-http")
        self.start_timeout = start_timeout

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()
