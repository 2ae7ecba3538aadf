"""CTranslate2 generators in a child process, so one benchmark run can hold both of its CPU GEMM backends.

CTranslate2 reads CT2_USE_MKL once per process, and on AMD CPUs neither backend is best for everything: MKL
(CT2_USE_MKL=1) for float32, while MKL's int8 GEMM on AMD is ~10x slower than oneDNN's (measured on the 2-core
Zen 5: 3-4 against 42 tok/s batch-1 decode). A Worker starts one child per backend setting; the parent sends it
requests over a pipe and waits (the child's threads alone run meanwhile), and every time is taken in the child,
around the CTranslate2 call alone, so candidates in different processes still alternate in the same rounds.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time

import numpy as np

BACKEND_ENV = {"default": {}, "mkl": {"CT2_USE_MKL": "1"}, "dnnl": {"CT2_USE_MKL": "0"}}


def _serve(conn, model_dir: str, compute_types: list[str], threads: int, clock_name: str) -> None:
    import ctranslate2
    import ctranslate2_gpt

    clock = getattr(time, clock_name)  # perf_counter, or process_time: this process's CPU time, all its threads
    generators = {t: ctranslate2.Generator(model_dir, compute_type=t, intra_threads=threads) for t in compute_types}
    while True:
        request = conn.recv()
        if request is None:
            break
        op, compute_type, ids, arg = request
        g = generators[compute_type]
        if op == "log_probs":
            conn.send(np.array(g.forward_batch(ids, return_log_probs=True)))
        elif op == "decode":
            times = []
            start = clock()
            def stamp(step, times=times):
                times.append(clock())

            out = ctranslate2_gpt.generate_greedy(g, ids, arg, stamp)
            conn.send((times[0] - start, (times[-1] - times[0]) / max(arg - 1, 1), out))
        elif op == "prefill":
            start = clock()
            ctranslate2_gpt.generate_greedy(g, ids, 1)
            conn.send(clock() - start)
    del generators


class Worker:
    """Generators for `compute_types` of the model in model_dir, in a child process with `backend`'s environment
    ("default", "mkl": CT2_USE_MKL=1, "dnnl": CT2_USE_MKL=0); times on time.<clock> (perf_counter or
    process_time)."""

    def __init__(self, model_dir: str, compute_types: list[str], threads: int, backend: str = "default",
                 clock: str = "perf_counter"):
        self.model_dir, self.backend = model_dir, backend
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        saved = dict(os.environ)
        os.environ.update(BACKEND_ENV[backend])  # the child starts with this environment
        try:
            self.process = context.Process(target=_serve, args=(child, model_dir, compute_types, threads, clock),
                                           daemon=True)
            self.process.start()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def _ask(self, *request):
        self.conn.send(request)
        return self.conn.recv()

    def log_probs(self, compute_type: str, ids) -> np.ndarray:
        """(B, T) ids -> (B, T, V) log-probabilities."""
        return self._ask("log_probs", compute_type, [list(map(int, row)) for row in ids], None)

    def decode(self, compute_type: str, prompt_ids, new_tokens: int):
        """(time to first token, seconds per later token, new token ids) of one batch-1 greedy generation."""
        return self._ask("decode", compute_type, [int(i) for i in prompt_ids], new_tokens)

    def prefill(self, compute_type: str, prompt_ids) -> float:
        """Seconds for the prompt and one new token."""
        return self._ask("prefill", compute_type, [int(i) for i in prompt_ids], None)

    def describe(self) -> list[str]:
        """CTranslate2's account of its ISA and GEMM backends under this environment (its verbose log)."""
        code = f"import ctranslate2; ctranslate2.Generator({self.model_dir!r})"
        env = {**os.environ, **BACKEND_ENV[self.backend], "CT2_VERBOSE": "1"}
        log = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stderr
        keys = ("ISA", "MKL", "backend")
        return [line.split("[info]", 1)[-1].strip(" -") for line in log.splitlines() if any(k in line for k in keys)]

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(timeout=30)
