"""generate(): token-identical to transformers' generate (greedy, fp32, every backend), padded batches equal to
their rows alone, transformers' logits processors, seeded sampling, the KV-cache decode path, argument checks."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import (  # noqa: E402
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from gpt_fast import OpenAIGPTLMHeadModel, ops  # noqa: E402
from gpt_fast.generation.decoder import IncrementalDecoder  # noqa: E402
from gpt_fast.generation.kv_cache import StaticKVCache  # noqa: E402
from gpt_fast.generation.sampling import SamplingConfig, TokenSelector  # noqa: E402
from gpt_fast.ops.kernel_plan import SMALL_M_MAX_ROWS, plan_kernels  # noqa: E402

BACKENDS = ["eager", "sdpa"] + (["fused"] if ops.has_kernel("flash_attention", "cpu") else [])
VOCAB = 97


def tiny_hf(seed=0, n_positions=64, **overrides):
    torch.manual_seed(seed)
    config = transformers.OpenAIGPTConfig(vocab_size=VOCAB, n_positions=n_positions, n_embd=48, n_layer=2, n_head=3,
                                          **overrides)
    return transformers.OpenAIGPTLMHeadModel(config).eval()


@pytest.fixture(scope="module")
def hf():
    return tiny_hf()


@pytest.fixture(scope="module")
def model(hf):
    return OpenAIGPTLMHeadModel.from_transformers(hf).eval()


def prompt(length, batch=1, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


class RecordingStreamer:
    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        self.puts.append(value.clone())

    def end(self):
        self.ended += 1


# -- equality with transformers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length", [1, 7])
def test_greedy_matches_transformers(hf, backend, length):
    ours = OpenAIGPTLMHeadModel.from_transformers(hf, attn_implementation=backend).eval()
    ids = prompt(length, batch=2)
    expected = hf.generate(ids, max_new_tokens=30, do_sample=False)
    torch.testing.assert_close(ours.generate(ids, max_new_tokens=30), expected, rtol=0, atol=0)


@pytest.mark.parametrize("afn", ["relu", "silu"])
def test_greedy_matches_transformers_other_activations(afn):
    # the decode step applies tanh-GELU inside the linear kernel; other activations go through the MLP's own
    hf_model = tiny_hf(seed=2, afn=afn)
    ids = prompt(4, batch=2)
    expected = hf_model.generate(ids, max_new_tokens=20, do_sample=False)
    ours = OpenAIGPTLMHeadModel.from_transformers(hf_model).eval()
    torch.testing.assert_close(ours.generate(ids, max_new_tokens=20), expected, rtol=0, atol=0)


def test_greedy_matches_transformers_gpt1_shape():
    torch.manual_seed(0)
    config = transformers.OpenAIGPTConfig(n_layer=2)  # GPT-1 width, heads and vocabulary, two layers
    hf_model = transformers.OpenAIGPTLMHeadModel(config).eval()
    ids = prompt(9)
    expected = hf_model.generate(ids, max_new_tokens=12, do_sample=False)
    ours = OpenAIGPTLMHeadModel.from_transformers(hf_model).eval()
    torch.testing.assert_close(ours.generate(ids, max_new_tokens=12), expected, rtol=0, atol=0)


def test_processors_eos_and_scores_match_transformers(hf, model):
    ids = prompt(5, batch=3, seed=3)
    plain = hf.generate(ids, max_new_tokens=12, do_sample=False)
    eos = int(plain[0, 5 + 4])  # a token row 0 emits at step 4, so rows finish at different steps
    kwargs = dict(max_new_tokens=12, repetition_penalty=1.3, eos_token_id=eos, pad_token_id=0, min_new_tokens=2,
                  output_scores=True, output_logits=True, return_dict_in_generate=True)
    expected = hf.generate(ids, do_sample=False, **kwargs)
    ours = model.generate(ids, **kwargs)
    torch.testing.assert_close(ours.sequences, expected.sequences, rtol=0, atol=0)
    assert len(ours.scores) == len(expected.scores) == ours.sequences.shape[1] - 5
    for mine, theirs in zip(ours.scores, expected.scores):
        torch.testing.assert_close(mine, theirs)
    for mine, theirs in zip(ours.logits, expected.logits):
        torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize("limits", [dict(min_length=9), dict(min_new_tokens=2, min_length=12)])
def test_min_length_matches_transformers(hf, model, limits):
    ids = prompt(5, batch=2, seed=3)
    eos = int(hf.generate(ids, max_new_tokens=1, do_sample=False)[0, 5])  # row 0's first greedy token
    kwargs = dict(max_new_tokens=10, eos_token_id=eos, pad_token_id=0, **limits)
    expected = hf.generate(ids, do_sample=False, **kwargs)
    torch.testing.assert_close(model.generate(ids, **kwargs), expected, rtol=0, atol=0)


def test_eos_stops_every_row_and_pads_like_transformers(hf, model):
    ids = prompt(4, batch=2, seed=5)
    plain = hf.generate(ids, max_new_tokens=20, do_sample=False)
    eos = [int(plain[0, 4 + 2]), int(plain[1, 4 + 6])]
    expected = hf.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=eos, pad_token_id=1)
    ours = model.generate(ids, max_new_tokens=20, eos_token_id=eos, pad_token_id=1)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert ours.shape[1] < 4 + 20


def test_default_and_max_length_match_transformers(hf, model):
    ids = prompt(6)
    torch.testing.assert_close(model.generate(ids), hf.generate(ids, do_sample=False), rtol=0, atol=0)
    assert model.generate(ids, max_length=9).shape == (1, 9)
    long_prompt = prompt(55)  # the default 20 new tokens are capped at n_positions = 64, as transformers does
    torch.testing.assert_close(model.generate(long_prompt), hf.generate(long_prompt, do_sample=False), rtol=0, atol=0)


# -- padded batches ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_rows_equal_their_prompt_alone(hf, model, side):
    lengths = [3, 8, 1]
    prompts = [prompt(n, seed=10 + n)[0] for n in lengths]
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, p in enumerate(prompts):
        span = slice(T - len(p), T) if side == "left" else slice(0, len(p))
        ids[row, span], mask[row, span] = p, 1
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=15)
    assert batch.shape == (3, T + 15)
    torch.testing.assert_close(batch[:, :T], ids, rtol=0, atol=0)
    for row, p in enumerate(prompts):
        alone = hf.generate(p[None], max_new_tokens=15, do_sample=False)
        torch.testing.assert_close(batch[row, T:], alone[0, len(p):], rtol=0, atol=0)


def test_mask_inferred_from_pad_token(model):
    p = prompt(4, seed=4)
    padded = torch.cat([torch.full((1, 3), 2), p], dim=1)  # left-padded with pad_token_id = 2
    alone = model.generate(p, max_new_tokens=6)
    out = model.generate(padded, max_new_tokens=6, pad_token_id=2)
    torch.testing.assert_close(out[:, 7:], alone[:, 4:], rtol=0, atol=0)


# -- sampling ----------------------------------------------------------------------------------------------------
def test_sampling_is_reproducible_under_a_seed(model):
    ids = prompt(4, batch=2)
    first = model.generate(ids, do_sample=True, max_new_tokens=20, seed=123)
    again = model.generate(ids, do_sample=True, max_new_tokens=20, generator=torch.Generator().manual_seed(123))
    other = model.generate(ids, do_sample=True, max_new_tokens=20, seed=124)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)


def test_num_return_sequences(model):
    ids = prompt(4, batch=2)
    out = model.generate(ids, do_sample=True, max_new_tokens=10, num_return_sequences=3, seed=0)
    assert out.shape == (6, 14)
    torch.testing.assert_close(out[:, :4], ids.repeat_interleave(3, dim=0), rtol=0, atol=0)
    assert len({tuple(row.tolist()) for row in out[:3]}) > 1  # the three samples of a prompt differ


def test_top_k_one_sampling_is_greedy(model):
    ids = prompt(5, batch=2)
    torch.testing.assert_close(model.generate(ids, do_sample=True, top_k=1, max_new_tokens=10, seed=1),
                               model.generate(ids, max_new_tokens=10), rtol=0, atol=0)


@pytest.mark.parametrize("settings", [dict(temperature=0.7, top_k=5), dict(top_p=0.8, top_k=0),
                                      dict(temperature=1.5, top_k=20, top_p=0.9, repetition_penalty=1.2)])
def test_processors_equal_transformers_warpers(settings):
    torch.manual_seed(0)
    scores, history = torch.randn(4, 50) * 3, torch.randint(0, 50, (4, 6))
    expected_list = LogitsProcessorList()
    if settings.get("repetition_penalty"):
        expected_list.append(RepetitionPenaltyLogitsProcessor(settings["repetition_penalty"]))
    if settings.get("temperature"):
        expected_list.append(TemperatureLogitsWarper(settings["temperature"]))
    if settings.get("top_k"):
        expected_list.append(TopKLogitsWarper(settings["top_k"]))
    if settings.get("top_p"):
        expected_list.append(TopPLogitsWarper(settings["top_p"]))
    expected = expected_list(history, scores.clone())
    config = SamplingConfig(do_sample=True, temperature=settings.get("temperature", 1.0), top_k=settings["top_k"],
                            top_p=settings.get("top_p", 1.0),
                            repetition_penalty=settings.get("repetition_penalty", 1.0),
                            eos_blocked_steps=0)
    selector = TokenSelector(config, None, 4, 50, torch.device("cpu"), None)
    selector.add_prompt(history, torch.full((4,), 6))
    torch.testing.assert_close(selector.process(scores.clone(), 0), expected)


def test_sampling_follows_the_softmax_distribution():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    config = SamplingConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                            eos_blocked_steps=0)
    rows = 40000
    selector = TokenSelector(config, None, rows, 4, torch.device("cpu"), torch.Generator().manual_seed(0))
    tokens = selector.select(logits.expand(rows, 4).clone())
    frequencies = torch.bincount(tokens, minlength=4).double() / rows
    torch.testing.assert_close(frequencies, logits.double().softmax(-1), atol=0.01, rtol=0)


# -- the decode path ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [SMALL_M_MAX_ROWS, SMALL_M_MAX_ROWS + 1])
def test_step_on_each_side_of_the_row_threshold_matches_transformers(hf, model, batch):
    plan = plan_kernels(model.attn_implementation, torch.device("cpu"), torch.float32)
    small_m = batch <= SMALL_M_MAX_ROWS and ops.has_kernel("linear_small_m", "cpu")
    assert model.transformer.h[0].attn.c_attn.engine(plan, batch) == ("small_m" if small_m else "gemm")
    ids = prompt(3, batch=batch, seed=11)
    expected = hf.generate(ids, max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(model.generate(ids, max_new_tokens=6), expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["eager", "sdpa"] + (["fused"] if "fused" in BACKENDS else []))
@pytest.mark.parametrize("T", [10, 20])  # 20 or 40 prompt rows: prefill through linear_small_m or through the GEMMs
def test_decode_steps_equal_full_forward(model, backend, T):
    """The decoder's prefill and steps give the logits of the model's forward on the whole sequence, under the
    module math ("eager") and under the kernels."""
    ids = prompt(T, batch=2, seed=7)
    lengths = torch.tensor([T, 6])  # row 1 holds 6 real tokens, packed first
    config = model.config
    cache = StaticKVCache(config.n_layer, 2, config.n_head, T + 6, config.n_embd // config.n_head, torch.float32,
                          torch.device("cpu"))
    keys_at = cache.keys.data_ptr()
    decoder = IncrementalDecoder(model, cache, plan_kernels(backend, torch.device("cpu"), torch.float32))
    with torch.inference_mode():
        logits = decoder.prefill(ids, lengths, all_full=False)
        sequences = [ids[0].tolist(), ids[1, :6].tolist()]
        for _ in range(4):
            for row in range(2):
                full = model(torch.tensor([sequences[row]])).logits[0, -1]
                torch.testing.assert_close(logits[row], full, rtol=1e-4, atol=1e-4)
            tokens = logits.argmax(-1)
            for row in range(2):
                sequences[row].append(int(tokens[row]))
            logits = decoder.step(tokens)
    assert cache.keys.data_ptr() == keys_at
    assert cache.lengths.tolist() == [T + 4, 10]


@pytest.mark.parametrize("backend", ["eager", "sdpa"] + (["fused"] if "fused" in BACKENDS else []))
def test_prefill_runs_the_last_block_on_the_last_token_only(model, backend):
    """The prefill's last block computes keys and values for every position (the cache) but its projections and
    MLP for each row's last token only; the earlier blocks for every position. (The logits are checked against
    the full forward by test_decode_steps_equal_full_forward.)"""
    T, config = 12, model.config
    rows_seen = {}  # (block index, layer name) -> rows of the layer's first call

    def note(key):
        return lambda module, args: rows_seen.setdefault(key, args[0].numel() // args[0].shape[-1]) and None

    hooks = [layer.register_forward_pre_hook(note(key)) for i, block in enumerate(model.transformer.h)
        for key, layer in (((i, "c_attn"), block.attn.c_attn), ((i, "c_fc"), block.mlp.c_fc))]
    cache = StaticKVCache(config.n_layer, 2, config.n_head, T, config.n_embd // config.n_head, torch.float32,
                          torch.device("cpu"))
    decoder = IncrementalDecoder(model, cache, plan_kernels(backend, torch.device("cpu"), torch.float32))
    try:
        with torch.inference_mode():
            decoder.prefill(prompt(T, batch=2, seed=3), torch.tensor([T, 5]), all_full=False)
    finally:
        for hook in hooks:
            hook.remove()
    last = config.n_layer - 1
    assert all(rows_seen[i, "c_attn"] == 2 * T for i in range(config.n_layer))
    assert [rows_seen[i, "c_fc"] for i in range(config.n_layer)] == [2 * T] * last + [2]


@pytest.mark.parametrize("T", [5, 40])  # prompt rows through linear_small_m, then through the GEMMs
def test_bfloat16_generates_close_to_float32(hf, T):
    """bf16 generation's first logits lie as close to the fp32 model's as transformers' own bf16 forward does."""
    ours = OpenAIGPTLMHeadModel.from_transformers(hf).to(torch.bfloat16).eval()
    ids = prompt(T, batch=2)
    out = ours.generate(ids, max_new_tokens=8, output_logits=True, return_dict_in_generate=True)
    assert out.sequences.shape == (2, T + 8) and out.logits[0].dtype == torch.float32
    with torch.no_grad():
        exact = hf(ids).logits[:, -1].double()
        hf_bf16 = copy.deepcopy(hf).to(torch.bfloat16)(ids).logits[:, -1].double()
    allowed = 3 * (hf_bf16 - exact).abs().max().item()
    assert (out.logits[0].double() - exact).abs().max().item() <= allowed


def test_streamer_gets_prompt_then_each_token(model):
    ids, streamer = prompt(3), RecordingStreamer()
    out = model.generate(ids, max_new_tokens=5, streamer=streamer)
    torch.testing.assert_close(streamer.puts[0], ids, rtol=0, atol=0)
    torch.testing.assert_close(torch.stack(streamer.puts[1:], dim=1), out[:, 3:], rtol=0, atol=0)
    assert streamer.ended == 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_greedy_equals_eager_loop(hf):
    ours = OpenAIGPTLMHeadModel.from_transformers(hf).cuda().eval()
    ids = prompt(6, batch=3).cuda()
    expected = hf.generate(ids.cpu(), max_new_tokens=20, do_sample=False)
    graph = ours.generate(ids, max_new_tokens=20, cuda_graph=None)
    torch.testing.assert_close(graph.cpu(), expected, rtol=0, atol=0)
    torch.testing.assert_close(ours.generate(ids, max_new_tokens=20, cuda_graph=False), graph, rtol=0, atol=0)
    eos = int(expected[1, 6 + 3])
    torch.testing.assert_close(ours.generate(ids, max_new_tokens=20, eos_token_id=eos).cpu(),
                               hf.generate(ids.cpu(), max_new_tokens=20, do_sample=False, eos_token_id=eos))
    calls = []  # with a forward hook no graph is taken: the hook runs at every step, not once at a capture
    ours.transformer.h[0].register_forward_hook(lambda module, args, out: calls.append(1))
    torch.testing.assert_close(ours.generate(ids, max_new_tokens=20, cuda_graph=None), graph, rtol=0, atol=0)
    assert len(calls) == 20  # the prefill and 19 decode steps


# -- argument checks ---------------------------------------------------------------------------------------------
BAD_ARGUMENTS = [
    (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(max_new_tokens=2.5), TypeError, "max_new_tokens"),
    (dict(max_length=4), ValueError, "max_length"),
    (dict(max_new_tokens=61), ValueError, "n_positions"),  # 5 + 60 = n_positions + 1 is allowed, as in transformers
    (dict(max_length=66), ValueError, "n_positions"),
    (dict(min_new_tokens=-1), ValueError, "min_new_tokens"),
    (dict(do_sample="yes"), TypeError, "do_sample"),
    (dict(do_sample=True, temperature=0.0), ValueError, "temperature"),
    (dict(do_sample=True, top_k=-2), ValueError, "top_k"),
    (dict(do_sample=True, top_p=1.5), ValueError, "top_p"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
    (dict(num_return_sequences=0), ValueError, "num_return_sequences"),
    (dict(num_return_sequences=2), ValueError, "do_sample"),
    (dict(eos_token_id=VOCAB), ValueError, "eos_token_id"),
    (dict(eos_token_id="x"), TypeError, "eos_token_id"),
    (dict(pad_token_id=-1), ValueError, "pad_token_id"),
    (dict(seed=1, generator=torch.Generator()), ValueError, "generator or seed"),
    (dict(generator=3), TypeError, "generator"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(streamer=object()), TypeError, "streamer"),
    (dict(output_scores=1), TypeError, "output_scores"),
    (dict(use_cache="no"), TypeError, "use_cache"),
    (dict(num_beams=2), ValueError, "streamer"),
    (dict(cuda_graph="yes"), TypeError, "cuda_graph"),
    (dict(eos_check_interval=0), ValueError, "eos_check_interval"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_ARGUMENTS, ids=[str(k) for k, _, _ in BAD_ARGUMENTS])
def test_bad_arguments_raise_before_any_work(model, kwargs, error, match):
    streamer = RecordingStreamer()
    kwargs.setdefault("streamer", streamer)
    with pytest.raises(error, match=match):
        model.generate(prompt(5), **kwargs)
    assert streamer.puts == []


BAD_PROMPTS = [
    (dict(input_ids=None), ValueError, "input_ids"),
    (dict(input_ids=torch.rand(1, 4)), TypeError, "input_ids"),
    (dict(input_ids=torch.zeros(4, dtype=torch.long)), ValueError, "input_ids"),
    (dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), ValueError, "input_ids"),
    (dict(input_ids=torch.full((1, 3), VOCAB)), IndexError, "input_ids"),
    (dict(input_ids=torch.ones(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 4)), ValueError, "attention_mask"),
    (dict(input_ids=torch.ones(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 3)), TypeError, "attention_mask"),
    (dict(input_ids=torch.ones(1, 3, dtype=torch.long), attention_mask=torch.full((1, 3), 2)), ValueError, "0"),
    (dict(input_ids=torch.ones(2, 3, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]])),
     ValueError, "real token"),
    (dict(input_ids=torch.ones(1, 3, dtype=torch.long), attention_mask=[[1, 1, 1]]), TypeError, "attention_mask"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_PROMPTS, ids=range(len(BAD_PROMPTS)))
def test_bad_prompts_raise(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        model.generate(max_new_tokens=3, **kwargs)


def test_no_cuda_graph_while_the_model_has_forward_hooks(monkeypatch):
    """A CUDA graph runs a hook's Python once, at its capture: with hooks the automatic choice takes no graph and
    cuda_graph=True is refused (the choice itself, with the CUDA decode kernel counted as present)."""
    from gpt_fast.generation.decoder import use_cuda_graph
    from gpt_fast.ops import _library

    monkeypatch.setattr(_library, "_KERNELS", _library._KERNELS | {("decode_attention", "cuda")})
    cuda = torch.device("cuda")
    assert use_cuda_graph(cuda, None, hooks=False) and not use_cuda_graph(cuda, None, hooks=True)
    assert not use_cuda_graph(cuda, False, hooks=True)
    with pytest.raises(ValueError, match="forward hooks"):
        use_cuda_graph(cuda, True, hooks=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_cuda_graph_on_cpu_raises_before_any_work(model):
    streamer = RecordingStreamer()
    with pytest.raises(ValueError, match="cuda_graph"):
        model.generate(prompt(5), cuda_graph=True, streamer=streamer)
    assert streamer.puts == []


def test_prompt_longer_than_positions_raises(model):
    with pytest.raises(ValueError, match="n_positions"):
        model.generate(prompt(70), max_new_tokens=1)
