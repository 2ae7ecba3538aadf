"""model.init_continuous_batching() / continuous_batching_context_manager() (gpt_fast/serving/manager.py):
transformers' continuous-batching manager on the serving engine. Tokens against transformers' own manager on the
same weights and against generate_batch; streaming; requests added before start; soft and hard stops; cancelling;
a kept manager; result handlers on an asyncio loop; refusals."""

import asyncio
import types

import pytest
import torch

import gpt_fast

transformers = pytest.importorskip("transformers")

CONFIG = dict(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=48, initializer_range=1.0)
PROMPTS = [[1, 2, 3], [40], [5] * 30, [9, 8, 7, 6, 5, 4]]
TIMEOUT = 30


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    theirs = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**CONFIG)).eval()
    return theirs, gpt_fast.OpenAIGPTLMHeadModel.from_transformers(theirs)


def greedy(max_new_tokens=8):
    return transformers.GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=-1,
                                         pad_token_id=0)


def collect(manager, request_ids) -> dict:
    results = {}
    while len(results) < len(request_ids):
        result = manager.get_result(timeout=TIMEOUT)
        assert result is not None, "a result did not come"
        results[result.request_id] = result
    return results


def test_tokens_equal_transformers_manager_and_generate_batch(pair):
    theirs, ours = pair
    with theirs.continuous_batching_context_manager(generation_config=greedy(), warmup=False) as manager:
        expected = collect(manager, [manager.add_request(p) for p in PROMPTS])
    with ours.continuous_batching_context_manager(generation_config=greedy(), timeout=TIMEOUT) as manager:
        got = collect(manager, [manager.add_request(p) for p in PROMPTS])
    assert not manager.is_running()  # the stop finished
    assert sorted(got) == sorted(expected) == [f"req_{i}" for i in range(len(PROMPTS))]
    for key in expected:
        assert got[key].generated_tokens == expected[key].generated_tokens
        assert got[key].prompt_ids == expected[key].prompt_ids and got[key].is_finished()
    batch = ours.generate_batch(PROMPTS, max_new_tokens=8)
    assert {k: v.generated_tokens for k, v in got.items()} == {k: v.generated_tokens for k, v in batch.items()}
    with ours.continuous_batching_context_manager(generation_config=greedy(), timeout=TIMEOUT,
                                                  prefill_first=False) as manager:  # prompts interleaved, as served
        assert not manager.engine.prefill_first
        interleaved = collect(manager, [manager.add_request(p) for p in PROMPTS])
    assert {k: v.generated_tokens for k, v in interleaved.items()} == {k: v.generated_tokens for k, v in got.items()}


def test_streaming_gives_every_token_as_it_comes(pair):
    _, ours = pair
    alone = ours.generate_batch([[1, 2]], max_new_tokens=5)["req_0"].generated_tokens
    with ours.continuous_batching_context_manager(generation_config=greedy(), timeout=TIMEOUT) as manager:
        request_id = manager.add_request([1, 2], request_id="mine", max_new_tokens=5, streaming=True,
                                         record_timestamps=True)
        outputs = list(manager.request_id_iter(request_id))
    assert request_id == "mine"
    assert [o.generated_tokens for o in outputs] == [alone[:i] for i in range(1, 6)]
    assert [o.is_finished() for o in outputs] == [False] * 4 + [True]
    assert len(outputs[-1].timestamps) == 5 and outputs[-1].lifespan[1] >= outputs[-1].lifespan[0] > 0


def test_requests_added_before_start_and_settings_per_request(pair):
    _, ours = pair
    manager = ours.init_continuous_batching(greedy(), max_batch=2)
    first = manager.add_request(PROMPTS[0], max_new_tokens=3)
    second = manager.add_request(PROMPTS[1], eos_token_id=54)
    with pytest.raises(ValueError, match="already added"):
        manager.add_request(PROMPTS[2], request_id=first)
    assert not manager.is_running() and manager.get_result(timeout=0.1) is None
    manager.start()
    results = collect(manager, [first, second])
    manager.stop(timeout=TIMEOUT)
    assert not manager.is_running()
    assert len(results[first].generated_tokens) == 3
    assert results[second].generated_tokens == [40, 40, 54]  # its own EOS ends it, kept as transformers keeps it


def test_a_soft_stop_finishes_the_requests_and_a_hard_stop_fails_them(pair):
    _, ours = pair
    manager = ours.init_continuous_batching(greedy(16), max_batch=1)
    manager.start()
    ids = [manager.add_request(p) for p in PROMPTS]
    manager.stop(block=True, timeout=TIMEOUT)  # all four, though one slot serves them one after another
    results = collect(manager, ids)
    assert all(r.status == "finished" and len(r.generated_tokens) == 16 for r in results.values())
    with pytest.raises(RuntimeError, match="takes no more requests"):
        manager.add_request(PROMPTS[0])

    manager = ours.init_continuous_batching(greedy(16), max_batch=1)
    manager.start()
    ids = [manager.add_request(p) for p in PROMPTS]
    manager.stop(hard_stop=True, timeout=TIMEOUT)
    results = collect(manager, ids)
    assert any(r.status == "failed" and r.error for r in results.values())
    assert manager.get_result(timeout=0.1) is None


def test_a_cancelled_request_delivers_nothing_more_and_does_not_hold_the_stop(pair):
    _, ours = pair
    manager = ours.init_continuous_batching(greedy(40))
    manager.start()
    long = manager.add_request([3] * 4, streaming=True)
    short = manager.add_request([7], max_new_tokens=2)
    first = manager.get_result(long, timeout=TIMEOUT)
    while first is None:  # short's result may come first: it goes back to the queue
        first = manager.get_result(long, timeout=TIMEOUT)
    manager.cancel_request(long)
    manager.stop(timeout=TIMEOUT)
    assert not manager.is_running()
    rest = [r for r in iter(lambda: manager.get_result(timeout=0.1), None)]
    assert all(r.request_id == short or len(r.generated_tokens) < 40 for r in rest)
    assert [r for r in rest if r.request_id == short and r.is_finished()]


def test_a_kept_manager_is_reused_until_destroyed(pair):
    _, ours = pair
    with ours.continuous_batching_context_manager(generation_config=greedy(), persistent_manager=True,
                                                 timeout=TIMEOUT) as first:
        collect(first, [first.add_request(PROMPTS[0])])
    with ours.continuous_batching_context_manager(generation_config=greedy(), timeout=TIMEOUT) as second:
        assert second is first
        assert collect(second, [second.add_request(PROMPTS[1], request_id="again")])["again"].is_finished()
    assert ours.init_continuous_batching(greedy()) is not first  # the second session did not keep it
    ours.destroy_cached_continuous_batching_manager()  # nothing kept: a no-op


def test_result_handlers_on_an_asyncio_loop_and_logprobs(pair):
    _, ours = pair
    config = types.SimpleNamespace(return_logprobs=True)

    async def run():
        manager = ours.init_continuous_batching(greedy(4), continuous_batching_config=config)
        manager.start()
        done, seen = asyncio.get_running_loop().create_future(), []
        request_id = manager.add_request(PROMPTS[3], streaming=True)

        def handler(output):
            seen.append(output)
            if output.is_finished():
                done.set_result(output)
        manager.register_result_handler(request_id, handler)  # outputs before this went to the queue
        final = await asyncio.wait_for(done, TIMEOUT)
        manager.stop(timeout=TIMEOUT)
        return final, seen

    final, seen = asyncio.run(run())
    assert final.generated_tokens == [4, 39, 39, 39] and len(final.logprobs) == 4
    assert all(lp <= 0 for lp in final.logprobs) and seen[-1] is final


@pytest.mark.parametrize("make, error, match", [
    (lambda m: m.init_continuous_batching(greedy(), num_beams=2), NotImplementedError, "num_beams"),
    (lambda m: m.init_continuous_batching(greedy(), max_batch=0), ValueError, "max_batch"),
    (lambda m: m.init_continuous_batching(greedy()).add_request([1] * 49), ValueError, "n_positions"),
    (lambda m: m.init_continuous_batching(greedy()).add_request([1], temperature=0.5), NotImplementedError,
     "logits-processor"),
    (lambda m: m.init_continuous_batching(greedy()).pause(), NotImplementedError, "pause"),
])
def test_refusals(pair, make, error, match):
    _, ours = pair
    with pytest.raises(error, match=match):
        make(ours)
