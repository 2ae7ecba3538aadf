"""The serving engine: one loop owns the model and a slot-based static KV cache and runs continuous batching.

    engine = Engine(model, tokenizer, max_batch=16, max_queue=64)
    engine.run()        # the loop on this thread until engine.stop() from another; or engine.start(): a new thread
    handle = engine.submit(prompt_ids, params, n=1, sink=callback)   # raises ServingError subclasses at once
    engine.cancel(handle); engine.call(fn)  # fn() on the engine's thread between steps, its result returned

Which thread runs the loop matters on a CPU: PyTorch's OpenMP gives every thread that enters a parallel region a
worker pool of its own, and once the pools together hold more threads than there are cores, idle workers stop
spinning and each of the ~80 parallel regions of a decode step waits for a worker to wake. Measured on 2 cores
(GPT-1 shape, bf16, 2 threads): generate() takes 5-6 ms per token on the thread that loaded the model and 10 ms
on a second thread. So `gpt-fast serve` runs the loop on the main thread, the one that loaded the model, and the
HTTP server on a thread of its own (it runs no parallel regions); `start()` is for tests and callers whose model
work happens on no other thread.

Each loop iteration: calls queued by call() run; cancelled sequences give back their slots; waiting sequences take
free slots (FIFO); at most one prefill chunk runs (the oldest sequence still prefilling, `prefill_chunk` tokens,
after any prefix an earlier prompt left in the prefix cache: prefix_cache.py; its last chunk also picks its first
token, and the request's other choices already holding a slot copy its cached prompt and pick theirs from the same
logits instead of prefilling it again); then one decode step for every decoding row (IncrementalDecoder.step over
the slot rows [0, hi), rows that are not decoding restored to their own length; with prompt_lookup_num_tokens or an
assistant_model a verification pass of the rows' drafts when they have any: speculation.py). So requests join
between decode steps, running rows wait at most one chunk, and a finished row's slot is free for the next step. With
prefill_first (generate_batch), the prompts that have not begun and fit a chunk are prefilled together in one
batched pass first, and decode steps wait while prompts are left to prefill.
`sink(Output)` is called from the engine's thread: it must not block. No web framework is imported here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future

import torch

from gpt_fast.generation.decoder import IncrementalDecoder, decode_plan
from gpt_fast.generation.replayed_step import ReplayedStep
from gpt_fast.serving.errors import BadRequest, ContextTooLong, EngineStopped, QueueFull
from gpt_fast.serving.observer import EngineObserver
from gpt_fast.serving.params import SamplingParams
from gpt_fast.serving.prefill import prefill_chunk, prefill_together, whole_prompts
from gpt_fast.serving.prefix_cache import PrefixCache
from gpt_fast.serving.sampler import Choice, RowSampler
from gpt_fast.serving.sequence import Output, Sequence, State
from gpt_fast.serving.slots import SlotCache
from gpt_fast.serving.speculation import speculation_for

log = logging.getLogger("gpt_fast.serving")
SIGNAL_CHECK_S = 0.2  # the longest an idle loop on the main thread leaves a signal unhandled


class RequestHandle:
    """The sequences of one submitted request (its n choices)."""

    def __init__(self, sequences: list[Sequence]):
        self.sequences = sequences


class Engine:
    def __init__(self, model, tokenizer, max_batch: int = 16, max_queue: int = 64, prefill_chunk: int = 256,
                 observer: EngineObserver | None = None, prefill_first: bool = False,
                 prompt_lookup_num_tokens: int | None = None, max_matching_ngram_size: int = 2,
                 prefix_cache_size: int = 0, assistant_model=None, num_assistant_tokens: int | None = None,
                 assistant_confidence_threshold: float | None = None, num_assistant_tokens_schedule: str | None = None):
        if max_batch < 1 or max_queue < 1 or prefill_chunk < 1:
            raise ValueError("max_batch, max_queue and prefill_chunk must be positive")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self.device = next(model.parameters()).device
        # hooks on the blocks' modules at the engine's start (a steering hook) run, as in generate()
        self.plan = decode_plan(model, self.device)
        self.slots = SlotCache(self.config, max_batch, model.dtype, self.device)
        self.sampler = RowSampler(self.config.vocab_size, max_batch, self.device)
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        # True: the waiting prompts that fit a chunk are prefilled together, in one pass, and no decode step runs while
        # a sequence holding a slot is still prefilling: throughput over the running rows' latency, for
        # generate_batch, where every request is known at once
        self.prefill_first = prefill_first
        self.observer = observer or EngineObserver()
        # prompt lookup or assisted decoding: decode steps that verify the rows' drafts (speculation.py), or None
        self.speculation = speculation_for(model, self.plan, self.slots, prompt_lookup_num_tokens,
                                           max_matching_ngram_size, assistant_model, num_assistant_tokens,
                                           assistant_confidence_threshold, num_assistant_tokens_schedule,
                                           prefix_cache_size)
        # prompts' keys and values kept for later prompts that start alike (prefix_cache.py), or None
        self.prefix_cache = PrefixCache(self.slots, prefix_cache_size) if prefix_cache_size else None
        # hi -> the decode step over the slot rows [0, hi), replayed from its recorded operators (replayed_step.py)
        self.decoders: dict[int, ReplayedStep] = {}
        self.waiting: deque[Sequence] = deque()  # guarded by self.wake
        self.calls: deque[tuple] = deque()  # (fn, Future) to run on the engine's thread; guarded by self.wake
        self.active: list[Sequence] = []  # sequences holding a slot, in admission order (engine thread only)
        self.wake = threading.Condition()
        self.running = False
        self.thread: threading.Thread | None = None
        self.own_thread = False  # start() made self.thread (stop() joins it); run() lent the caller's

    # -- the submitting side (any thread) -------------------------------------------------------------------------
    @property
    def n_positions(self) -> int:
        return self.config.n_positions

    def queue_depth(self) -> int:
        return len(self.waiting)

    def batch_size(self) -> int:
        return self.slots.in_use()

    def check(self, prompt: list[int], params: SamplingParams) -> None:
        """Raises BadRequest / ContextTooLong for a request that can never run."""
        if not prompt:
            raise BadRequest("the prompt is empty (it must hold at least one token)", "prompt")
        vocab = self.config.vocab_size
        if any(not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab for t in prompt):
            raise BadRequest(f"prompt token ids must be integers in [0, {vocab})", "prompt")
        if any(token >= vocab for token, _ in params.logit_bias):
            raise BadRequest(f"logit_bias keys must be token ids in [0, {vocab})", "logit_bias")
        if len(prompt) + params.max_tokens > self.n_positions:
            raise ContextTooLong(f"this model's maximum context length is {self.n_positions} tokens; the prompt has "
                                 f"{len(prompt)} and max_tokens is {params.max_tokens} (together "
                                 f"{len(prompt) + params.max_tokens}); shorten the prompt or lower max_tokens")

    def submit(self, prompt: list[int], params: SamplingParams, sink, n: int = 1) -> RequestHandle:
        try:
            self.check(prompt, params)
        except BadRequest:
            self.observer.request_rejected("bad_request")
            raise
        sequences = [Sequence(i, list(prompt), params, sink, self.tokenizer, self.device) for i in range(n)]
        for sequence in sequences:
            sequence.siblings = sequences
        with self.wake:
            if not self.running:
                raise EngineStopped("the engine is not running")
            queued = len(self.waiting) - len(self.slots.free)  # sequences that will wait once the free slots fill
            if queued + n > self.max_queue:
                self.observer.request_rejected("queue_full")
                raise QueueFull(f"the server's queue is full ({max(queued, 0)} of {self.max_queue} sequences "
                                "waiting for a slot); retry later")
            self.waiting.extend(sequences)
            self.wake.notify()
        return RequestHandle(sequences)

    def cancel(self, handle: RequestHandle) -> None:
        """Stops the request's sequences (no further Output); their slots are freed before the next step."""
        with self.wake:
            for sequence in handle.sequences:
                sequence.cancelled = True
                if sequence.state is State.WAITING and sequence in self.waiting:
                    self.waiting.remove(sequence)
            self.wake.notify()

    def call(self, fn):
        """Runs fn() on the engine's thread between two steps and returns its result (or raises its exception);
        blocks the calling thread. For model work that must share the engine's thread (see the module note)."""
        future = Future()
        with self.wake:
            if not self.running:
                raise EngineStopped("the engine is not running")
            self.calls.append((fn, future))
            self.wake.notify()
        return future.result()

    def run(self, on_start=None) -> None:
        """Runs the loop on the calling thread until stop() is called from another thread (or a signal's handler).
        on_start(), when given, runs once the engine takes requests and before the loop (gpt-fast serve starts its
        HTTP server there, so no request meets an engine that is not yet running)."""
        self.claim(threading.current_thread(), own=False)
        if on_start is not None:
            try:
                on_start()
            except BaseException:
                self.running = False
                raise
        self.loop()

    def start(self) -> "Engine":
        """Runs the loop on a new thread (see the module note on which thread should run it)."""
        self.claim(threading.Thread(target=self.loop, name="gpt-fast-engine", daemon=True), own=True)
        self.thread.start()
        return self

    def claim(self, thread: threading.Thread, own: bool) -> None:
        """Marks the engine running on `thread` (own: start() made it, so stop() joins it); one loop at a time."""
        with self.wake:
            if self.running:
                raise RuntimeError("the engine is already running")
            self.running = True
        self.thread, self.own_thread = thread, own

    def stop(self, timeout: float = 10.0) -> None:
        """Ends the loop after its current step; waits for a thread start() made (run()'s caller returns by itself:
        joining it from here could wait on the very thread that is waiting for us)."""
        with self.wake:
            self.running = False
            self.wake.notify()
        if self.own_thread and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    # -- the engine thread ----------------------------------------------------------------------------------------
    def loop(self) -> None:
        # On the main thread an idle wait wakes now and then. A signal (SIGTERM, Ctrl-C) only flags itself to CPython,
        # whose handler runs when the main thread next runs bytecode; a lock wait is cut short only when the signal
        # reaches this thread while it sleeps, not when the kernel hands it to another thread or it lands just
        # before the wait begins. An endless wait let `gpt-fast serve` ignore SIGTERM until the next request.
        idle_wait = SIGNAL_CHECK_S if threading.current_thread() is threading.main_thread() else None
        try:
            with torch.inference_mode():
                while True:
                    with self.wake:
                        while self.running and not self.waiting and not self.active and not self.calls:
                            self.wake.wait(idle_wait)
                        if not self.running:
                            break
                        self.admit()
                        calls, self.calls = list(self.calls), deque()
                    self.run_calls(calls)
                    self.reap_cancelled()
                    if not self.run_prefill():
                        self.guarded(self.decode_step, [s for s in self.active if s.state is State.DECODING])
        finally:  # stop(), or an exception such as KeyboardInterrupt on the main thread: every caller hears of it
            with self.wake:
                self.running = False
                pending, self.waiting = list(self.waiting), deque()
                calls, self.calls = list(self.calls), deque()
            for sequence in list(self.active) + pending:
                self.finish(sequence, "error", "the server is shutting down")
            for _, future in calls:
                future.set_exception(EngineStopped("the engine stopped"))

    @staticmethod
    def run_calls(calls: list) -> None:
        for fn, future in calls:
            try:
                future.set_result(fn())
            except Exception as error:  # noqa: BLE001 - handed to the caller
                future.set_exception(error)

    def admit(self) -> None:  # holds self.wake
        while self.waiting and self.slots.free:
            sequence = self.waiting.popleft()
            sequence.slot = self.slots.acquire()
            sequence.state = State.PREFILL
            self.sampler.reset(sequence.slot)
            self.active.append(sequence)
            self.observer.sequence_started(time.perf_counter() - sequence.arrived)

    def reap_cancelled(self) -> None:
        for sequence in [s for s in self.active if s.cancelled]:
            self.release(sequence)
            self.record_finish(sequence, "cancelled")

    def guarded(self, step, sequences: list[Sequence]) -> None:
        """Runs a step; an unexpected failure ends the sequences it was running with an error, not the loop."""
        if not sequences:
            return
        try:
            step(sequences)
        except Exception as error:  # noqa: BLE001 - reported to the requests, logged, and the loop goes on
            log.exception("engine step failed")
            for sequence in sequences:
                self.finish(sequence, "error", f"generation failed: {type(error).__name__}: {error}")

    def run_prefill(self) -> bool:
        """This iteration's prefill: one chunk of the oldest prefilling sequence; in prefill_first mode first every
        whole prompt that fits a chunk, in one pass. True when the decode step waits (prefill_first, prompts left)."""
        prefilling = [s for s in self.active if s.state is State.PREFILL]
        together = whole_prompts(prefilling, self.prefill_chunk) if self.prefill_first else []
        if len(together) > 1:
            self.guarded(self.prefill_together_step, together)
            prefilling = [s for s in prefilling if s.state is State.PREFILL]
        self.guarded(self.prefill_step, prefilling[:1])
        return self.prefill_first and len(prefilling) > 1

    def prefill_step(self, sequences: list[Sequence]) -> None:
        sequence = sequences[0]
        if not sequence.prefilled and self.prefix_cache is not None and sequence.prompt_logprobs is None:
            sequence.prefilled = self.prefix_cache.restore(sequence.slot, sequence.prompt)  # 0: no shared prefix
            self.observer.prefix_cache(len(sequence.prompt), sequence.prefilled)
        start = sequence.prefilled
        end = min(len(sequence.prompt), start + self.prefill_chunk)
        ids = torch.tensor(sequence.prompt[start:end], dtype=torch.long, device=self.device)
        # Every position's hidden state when the request wants the prompt's log-probabilities, else the last's.
        hidden = prefill_chunk(self.model, self.plan, self.slots, sequence.slot, ids, start,
                               all_rows=sequence.prompt_logprobs is not None)  # (c or 1, C)
        sequence.prefilled = end
        if sequence.prompt_logprobs is not None:
            self.add_prompt_logprobs(sequence, hidden, start, end)
        if end < len(sequence.prompt):
            self.observer.step(1, self.queue_depth(), 0)
            return
        self.start_decoding(sequence, self.model.logits(hidden[-1:], self.plan).float())

    def start_decoding(self, sequence: Sequence, logits: torch.Tensor) -> None:
        """The sequence's prompt is cached and logits (1, V) float32 follow it: it and the sibling choices that
        share its prompt pick their first tokens and decode from the next step."""
        if self.prefix_cache is not None:
            self.prefix_cache.store(sequence.slot, sequence.prompt)
        group = [sequence] + self.share_prompt(sequence)
        logits = logits.expand(len(group), -1).clone()  # (n, V)
        for member in group:
            member.state = State.DECODING
        for member, choice in zip(group, self.sampler.select(logits, group)):
            self.emit(member, choice)
        self.observer.step(1, self.queue_depth(), len(group))

    def prefill_together_step(self, sequences: list[Sequence]) -> None:
        logits = prefill_together(self.model, self.plan, self.slots, [s.slot for s in sequences],
                                  [s.prompt for s in sequences])  # (b, V)
        for row, sequence in enumerate(sequences):
            sequence.prefilled = len(sequence.prompt)
            self.start_decoding(sequence, logits[row:row + 1])

    def share_prompt(self, sequence: Sequence) -> list[Sequence]:
        """The sibling choices holding a slot whose prefill has not begun take this sequence's cached prompt (the
        keys and values they would compute themselves) instead of prefilling it again; returns them."""
        followers = [s for s in sequence.siblings if s is not sequence and s.state is State.PREFILL
                     and s.prefilled == 0 and not s.cancelled]
        for follower in followers:
            self.slots.copy_prefix(sequence.slot, follower.slot, len(sequence.prompt))
            follower.prefilled = len(follower.prompt)
            if sequence.prompt_logprobs is not None:
                follower.prompt_logprobs = list(sequence.prompt_logprobs)
        return followers

    def add_prompt_logprobs(self, sequence: Sequence, hidden: torch.Tensor, start: int, end: int) -> None:
        """The log-probability of each prompt token after the first, given the tokens before it."""
        following = sequence.prompt[start + 1:end + 1]  # the tokens each position predicts
        if not following:  # the prompt's last token predicts the first new one, not a prompt token
            return
        logprobs = torch.log_softmax(self.model.logits(hidden[:len(following)], self.plan).float(), dim=-1)
        picked = logprobs.gather(1, torch.tensor(following, device=self.device)[:, None])[:, 0]
        sequence.prompt_logprobs.extend(picked.tolist())

    def decode_step(self, sequences: list[Sequence]) -> None:
        if self.speculation is not None and self.speculate(sequences):
            return
        hi = max(s.slot for s in sequences) + 1
        tokens = torch.zeros(hi, dtype=torch.long, device=self.device)  # (hi,) rows not decoding take token 0
        rows = torch.tensor([s.slot for s in sequences], device=self.device)
        tokens[rows] = torch.tensor([s.last_token for s in sequences], device=self.device)
        if hi not in self.decoders:
            self.decoders[hi] = ReplayedStep(IncrementalDecoder(self.model, self.slots.rows(hi), self.plan))
        lengths = self.slots.lengths[:hi]
        saved = lengths.clone()
        logits = self.decoders[hi](tokens)  # (hi, V)
        decoding = torch.zeros(hi, dtype=torch.bool, device=self.device)
        decoding[rows] = True
        lengths.copy_(torch.where(decoding, lengths, saved))  # prefilling / free rows keep their length
        every_row = len(sequences) == hi and all(s.slot == i for i, s in enumerate(sequences))
        selected = logits if every_row else logits[rows]  # (R, V); a full batch in slot order needs no copy
        for sequence, choice in zip(sequences, self.sampler.select(selected, sequences)):
            self.emit(sequence, choice)
        self.observer.step(len(sequences), self.queue_depth(), len(sequences))

    def speculate(self, sequences: list[Sequence]) -> bool:
        """This step as a speculative round (speculation.py); False when no row has a draft (a plain step follows)."""
        before = sum(len(s.output) for s in sequences)
        outcome = self.speculation.round(sequences, self.sampler.select, self.emit)
        if outcome is None:
            return False
        self.observer.speculated(*outcome)
        self.observer.step(len(sequences), self.queue_depth(), sum(len(s.output) for s in sequences) - before)
        return True

    def emit(self, sequence: Sequence, choice: Choice) -> None:
        """Hands a new token to the sequence's sink, finishing the sequence when it should stop."""
        now = time.perf_counter()
        if sequence.first_token_at is None:
            sequence.first_token_at = now
            self.observer.first_token(now - sequence.arrived)
        sequence.output.append(choice.token)
        params = sequence.params
        if choice.token in params.stop_token_ids:  # counted, not decoded into the text
            text, reason = sequence.text.flush(), "stop"
        else:
            text, stopped = sequence.text.add(choice.token)
            reason = "stop" if stopped else "length" if len(sequence.output) >= params.max_tokens else None
            if reason == "length":
                text += sequence.text.flush()
        output = Output(sequence.index, text, [choice.token], [choice] if params.logprobs is not None else [],
                        reason)
        if sequence.prompt_logprobs is not None and len(sequence.output) == 1:
            output.prompt_logprobs = sequence.prompt_logprobs
        if reason is not None:
            if self.prefix_cache is not None:  # its whole text so far, for a next turn that repeats it
                self.prefix_cache.store(sequence.slot, sequence.prompt + sequence.output[:-1])
            if self.speculation is not None:
                self.speculation.finished(sequence)
            self.release(sequence)  # before the sink hears of the end, so the slot is free by then
        self.send(sequence, output)
        if reason is not None:
            self.record_finish(sequence, reason)

    def finish(self, sequence: Sequence, reason: str, error: str | None = None) -> None:
        """Ends a sequence early (an error or shutdown), telling its sink."""
        if sequence.state is State.FINISHED:
            return
        self.release(sequence)
        self.send(sequence, Output(sequence.index, finish_reason=reason, error=error))
        self.record_finish(sequence, reason)

    def send(self, sequence: Sequence, output: Output) -> None:
        if sequence.cancelled:
            return
        try:
            sequence.sink(output)
        except Exception:  # noqa: BLE001 - a sink that fails (its client gone) cancels its sequence
            log.exception("a sink failed; cancelling its sequence")
            sequence.cancelled = True

    def release(self, sequence: Sequence) -> None:
        if sequence.slot is not None:
            self.slots.release(sequence.slot)
            sequence.slot = None
        if sequence in self.active:
            self.active.remove(sequence)
        sequence.state = State.FINISHED

    def record_finish(self, sequence: Sequence, reason: str) -> None:
        n = len(sequence.output)
        tpot = None
        if n > 1 and sequence.first_token_at is not None:
            tpot = (time.perf_counter() - sequence.first_token_at) / (n - 1)
        self.observer.sequence_finished(reason, len(sequence.prompt), n, tpot)
