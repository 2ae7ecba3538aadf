"""Which thread runs the serving engine: Engine.run() on the calling thread, Engine.start() on a new one,
Engine.call(fn) on the engine's thread between steps, and `gpt-fast serve`'s serve_forever running the engine on
the main thread (the one that loaded the model: gpt_fast/serving/engine.py says why) with uvicorn beside it,
ending on SIGTERM and failing in one line when its port is taken; and BackgroundServer's connections sending each
token at once (TCP_NODELAY)."""

from __future__ import annotations

import os
import signal
import socket
import threading

import pytest
import torch
from serve_helpers import collect, tiny_model_and_tokenizer

from gpt_fast.serving import Engine, SamplingParams
from gpt_fast.serving.errors import EngineStopped


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_model_and_tokenizer()


def greedy(model, prompt, n):
    with torch.inference_mode():
        return model.generate(torch.tensor([prompt]), max_new_tokens=n)[0, len(prompt):].tolist()


def test_run_serves_on_the_calling_thread_until_stopped(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer, max_batch=2)
    prompt = tokenizer("hello, my dog is cute")["input_ids"]
    seen = {}

    def client():
        while not engine.running:
            threading.Event().wait(0.01)
        seen["tokens"] = collect(engine, prompt, SamplingParams(max_tokens=5, temperature=0))[0]["tokens"]
        seen["thread"] = engine.call(threading.current_thread)
        engine.stop()

    thread = threading.Thread(target=client)
    thread.start()
    engine.run()  # returns once the client has stopped it
    thread.join(30)
    assert seen["tokens"] == greedy(model, prompt, 5)
    assert seen["thread"] is threading.current_thread() and engine.thread is threading.current_thread()
    assert not engine.running


def test_call_returns_results_and_raises_errors_on_the_engine_thread(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer).start()
    try:
        assert engine.call(threading.current_thread) is engine.thread is not threading.current_thread()
        assert engine.call(lambda: torch.is_inference_mode_enabled())  # the loop's mode

        def fails():
            raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            engine.call(fails)
        assert engine.call(lambda: 7) == 7  # the loop goes on after a failed call
        with pytest.raises(RuntimeError, match="already running"):
            engine.start()
    finally:
        engine.stop()
    with pytest.raises(EngineStopped):
        engine.call(lambda: 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_forever_runs_the_engine_on_the_main_thread_and_ends_on_sigterm(model_and_tokenizer):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from gpt_fast.serving.http import build_app
    from gpt_fast.serving.launch import serve_forever

    assert threading.current_thread() is threading.main_thread()  # pytest runs tests on the main thread
    model, tokenizer = model_and_tokenizer
    app, engine = build_app(model, tokenizer, "tiny", max_batch=2, start_engine=False)
    port = free_port()
    seen = {}

    def client():
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(url + "/health", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                threading.Event().wait(0.05)
            body = {"model": "tiny", "prompt": "hello", "max_tokens": 3}
            seen["usage"] = httpx.post(url + "/v1/completions", json=body, timeout=30).json()["usage"]
            seen["engine_thread"] = engine.call(threading.current_thread)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=client)
    thread.start()
    serve_forever(app, engine, "127.0.0.1", port, log_level="warning")  # returns on SIGTERM
    thread.join(30)
    assert seen["usage"]["completion_tokens"] == 3
    assert seen["engine_thread"] is threading.main_thread()
    assert not engine.running and signal.getsignal(signal.SIGTERM) is previous


def test_serve_forever_ends_on_a_sigterm_another_thread_receives(model_and_tokenizer):
    """The kernel may hand a process's SIGTERM to any thread (and one may land just before a wait begins); CPython
    then only flags it, and the main thread runs the handler when it next runs bytecode. The idle engine on the main
    thread must get there: it used to wait without end (a CI run hung in the test above). Here the signal goes to a
    helper thread; a watchdog signalling the main thread itself ends the test if the engine does not stop."""
    pytest.importorskip("fastapi")
    from gpt_fast.serving.http import build_app
    from gpt_fast.serving.launch import serve_forever

    model, tokenizer = model_and_tokenizer
    app, engine = build_app(model, tokenizer, "tiny", start_engine=False)
    main = threading.get_ident()
    watchdog_fired = threading.Event()

    def watchdog():  # a signal for the main thread itself interrupts any wait
        watchdog_fired.set()
        signal.pthread_kill(main, signal.SIGTERM)

    def helper():
        while not engine.running:
            threading.Event().wait(0.01)
        threading.Event().wait(0.5)  # the engine settles into its idle wait
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

    timer = threading.Timer(30, watchdog)
    timer.start()
    threading.Thread(target=helper).start()
    try:
        serve_forever(app, engine, "127.0.0.1", free_port(), log_level="warning")
    finally:
        timer.cancel()
    assert not watchdog_fired.is_set(), "serve_forever kept waiting after a SIGTERM delivered to another thread"
    assert not engine.running


def test_serve_forever_on_a_taken_port_is_a_clear_error(model_and_tokenizer):
    pytest.importorskip("fastapi")
    from gpt_fast.serving.http import build_app
    from gpt_fast.serving.launch import serve_forever

    model, tokenizer = model_and_tokenizer
    app, engine = build_app(model, tokenizer, "tiny", start_engine=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"could not start on 127.0.0.1:{port}"):
            serve_forever(app, engine, "127.0.0.1", port, log_level="critical")
    assert not engine.running


def test_background_server_connections_send_without_delay(model_and_tokenizer):
    """Without TCP_NODELAY on the accepted socket, a streamed token after the response headers waited for the
    client's delayed ACK (~40 ms a request, measured); asyncio sets it only on sockets made for TCP."""
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from gpt_fast.serving.http import build_app
    from gpt_fast.serving.launch import BackgroundServer

    model, tokenizer = model_and_tokenizer
    app, _ = build_app(model, tokenizer, "tiny")
    with BackgroundServer(app) as running, httpx.Client() as client:
        assert client.get(running.url + "/health").status_code == 200  # a kept-alive connection
        connections = list(running.server.server_state.connections)
        assert connections
        for connection in connections:
            sock = connection.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
