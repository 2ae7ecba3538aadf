"""The rest of transformers' model surface, each checked against transformers on the same weights: positional
arguments, loss kwargs, num_parameters, embedding accessors and resizing, gradient checkpointing, flattened
multiple-choice masks, and the from_pretrained options (ignore_mismatched_sizes, output_loading_info, subfolder)."""

import inspect
import json

import pytest
import torch
from conftest import DOUBLE, HEADS, SEQ_CLS, TINY, forward, gpt_fast_class, hf_model, load_pair, random_ids, shape_for

import gpt_fast

transformers = pytest.importorskip("transformers")
LM = "OpenAIGPTLMHeadModel"


def padding_mask(shape):
    mask = torch.ones(shape, dtype=torch.long)
    mask[0, ..., -2:] = 0  # right padding in the first row (every position still sees a real token)
    return mask


@pytest.mark.parametrize("head", HEADS)
def test_positional_order_is_transformers(head):
    theirs = [name for name in inspect.signature(getattr(transformers, head).forward).parameters if name != "kwargs"]
    ours = list(inspect.signature(gpt_fast_class(head).forward).parameters)
    assert ours[:len(theirs)] == theirs


@pytest.mark.parametrize("head", HEADS)
def test_mask_passed_positionally(head):
    hf, ours = load_pair(head, "sdpa")
    ids = random_ids(shape_for(head))
    mask = padding_mask(ids.shape)
    flat_mask = mask.reshape(-1, ids.shape[-1])  # transformers' double-heads model takes (batch * choices, T)
    expected = forward(hf, ids, flat_mask if head == DOUBLE else mask, return_dict=False)
    got = forward(ours, ids, mask, return_dict=False)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    unmasked = forward(ours, ids, return_dict=False)
    assert not torch.allclose(unmasked[0], got[0], atol=1e-3)  # the mask really was used


def test_double_heads_takes_flattened_masks():
    hf, ours = load_pair(DOUBLE, "eager")
    ids = random_ids((2, 3, 7))
    mask, types = padding_mask(ids.shape), random_ids(ids.shape, seed=5)
    flat_mask, flat_types = mask.reshape(6, 7), types.reshape(6, 7)
    expected = forward(hf, ids, attention_mask=flat_mask, token_type_ids=flat_types)
    for m, t in ((mask, types), (flat_mask, flat_types)):
        got = forward(ours, ids, attention_mask=m, token_type_ids=t)
        torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got.mc_logits, expected.mc_logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(3, 7\).*\(6, 7\)"):
        ours(ids, torch.ones(3, 7, dtype=torch.long))


def test_lm_loss_kwargs_match_transformers():
    hf, ours = load_pair(LM, "sdpa")
    ids = random_ids((2, 9))
    labels = ids.clone()
    labels[0, :4] = -100
    for kwargs in (dict(num_items_in_batch=torch.tensor(37)), dict(num_items_in_batch=5),
                   dict(ignore_index=7, labels=ids.masked_fill(ids == ids[0, 3], 7)),
                   dict(shift_labels=torch.roll(ids, -1, dims=1))):
        kwargs = {"labels": labels, **kwargs}
        expected = forward(hf, ids, **kwargs).loss
        torch.testing.assert_close(forward(ours, ids, **kwargs).loss, expected, atol=1e-5, rtol=1e-5)
    # with num_items_in_batch the sum is divided by it, not by the count of this batch's targets
    mean = forward(ours, ids, labels=labels).loss
    torch.testing.assert_close(forward(ours, ids, labels=labels, num_items_in_batch=10).loss,
                               mean * (labels[:, 1:] != -100).sum() / 10)


def test_trainer_passes_loss_kwargs_only_where_they_are_used():
    assert gpt_fast.OpenAIGPTLMHeadModel.accepts_loss_kwargs
    for head in ("OpenAIGPTModel", DOUBLE, SEQ_CLS):
        assert not gpt_fast_class(head).accepts_loss_kwargs
    _, ours = load_pair(SEQ_CLS, "sdpa")
    ids = random_ids((2, 5))
    labels = torch.tensor([0, 1])
    torch.testing.assert_close(forward(ours, ids, labels=labels, num_items_in_batch=3).loss,
                               forward(ours, ids, labels=labels).loss)  # accepted and unused, as transformers
    with pytest.raises(TypeError, match="unexpected arguments: bogus"):
        ours(ids, bogus=1)


@pytest.mark.parametrize("head", HEADS)
def test_num_parameters_match_transformers(head):
    hf, ours = load_pair(head, "sdpa")
    for model in (hf, ours):
        model.base_model.positions_embed.weight.requires_grad_(False)
        model.base_model.h[0].ln_1.bias.requires_grad_(False)
    for only_trainable in (False, True):
        for exclude_embeddings in (False, True):
            assert ours.num_parameters(only_trainable, exclude_embeddings) == hf.num_parameters(
                only_trainable=only_trainable, exclude_embeddings=exclude_embeddings), (only_trainable,
                                                                                         exclude_embeddings)


@pytest.mark.parametrize("head", HEADS)
def test_accessors_match_transformers(head):
    hf, ours = load_pair(head, "sdpa")
    assert ours.base_model_prefix == hf.base_model_prefix == "transformer"
    assert ours.main_input_name == hf.main_input_name == "input_ids"
    assert ours.can_generate() == hf.can_generate() == (head == LM)
    assert (ours.base_model is ours) == (hf.base_model is hf)
    assert ours.get_decoder() is ours.base_model and type(hf.get_decoder()).__name__ == "OpenAIGPTModel"
    assert ours.get_memory_footprint(return_buffers=False) == hf.get_memory_footprint(return_buffers=False)
    # buffers: gpt_fast holds position_ids only (transformers also a causal-mask buffer)
    assert ours.get_memory_footprint() == ours.get_memory_footprint(return_buffers=False) + 8 * TINY["n_positions"]
    assert ours.get_input_embeddings() is ours.base_model.tokens_embed
    assert (ours.get_output_embeddings() is None) == (hf.get_output_embeddings() is None)
    if head != "OpenAIGPTModel":
        assert ours.base_model is ours.transformer
        embedding = torch.nn.Embedding(99, 32)
        ours.set_input_embeddings(embedding)
        assert ours.transformer.tokens_embed is embedding
        if head in (LM, DOUBLE):
            assert ours.get_output_embeddings() is ours.lm_head and ours.lm_head.weight is embedding.weight


def test_a_hand_written_generation_loop_runs_as_on_transformers():
    """prepare_inputs_for_generation, then the forward, step by step: the tokens of transformers' same loop."""
    hf, ours = load_pair(LM, "fused")
    ids = random_ids((2, 5))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    sequences = []
    for model in (hf, ours):
        tokens, attention = ids, mask
        for _ in range(4):
            inputs = model.prepare_inputs_for_generation(tokens, attention_mask=attention, use_cache=False)
            with torch.no_grad():
                logits = model(**inputs).logits[:, -1]  # (B, V)
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        sequences.append(tokens)
    assert set(ours.prepare_inputs_for_generation(ids, attention_mask=mask)) == {"input_ids", "attention_mask"}
    torch.testing.assert_close(sequences[1], sequences[0], rtol=0, atol=0)
    torch.testing.assert_close(sequences[1], ours.generate(ids, attention_mask=mask, max_new_tokens=4), rtol=0, atol=0)


@pytest.mark.parametrize("head", [LM, DOUBLE, SEQ_CLS])
def test_resize_token_embeddings_matches_transformers(head):
    hf, ours = load_pair(head, "eager")
    torch.manual_seed(0)
    old = ours.get_input_embeddings().weight.detach().clone()
    assert hf.resize_token_embeddings(104).weight.shape == ours.resize_token_embeddings(104).weight.shape == (104, 32)
    assert ours.config.vocab_size == hf.config.vocab_size == 104
    new = ours.get_input_embeddings().weight
    torch.testing.assert_close(new[:99], old, rtol=0, atol=0)
    # transformers draws the new rows around the old rows' mean with a covariance scaled by 1e-9
    torch.testing.assert_close(new[99:], hf.get_input_embeddings().weight[99:], atol=1e-3, rtol=0)
    if head != SEQ_CLS:
        assert ours.lm_head.weight is new and ours.lm_head.out_features == 104
    ids = random_ids(shape_for(head), vocab=104)
    for a, b in zip(forward(ours, ids, return_dict=False), forward(hf, ids, return_dict=False)):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
    assert ours.resize_token_embeddings(None, pad_to_multiple_of=64).num_embeddings == 128
    assert ours.resize_token_embeddings(50).num_embeddings == ours.config.vocab_size == 50


def test_resize_after_adding_a_token_to_the_tokenizer(tmp_path):
    tok = gpt_fast.OpenAIGPTTokenizerFast.from_pretrained("openai-gpt")
    tok.add_special_tokens({"cls_token": "[CLS]"})
    config = gpt_fast.OpenAIGPTConfig(vocab_size=40478, n_positions=16, n_embd=8, n_layer=1, n_head=2)
    model = gpt_fast.OpenAIGPTDoubleHeadsModel(config)
    model.resize_token_embeddings(len(tok))
    assert model.config.vocab_size == len(tok) == 40479
    ids = torch.tensor([tok.encode("hello [CLS]")])
    assert ids[0, -1] == tok.cls_token_id == 40478
    assert forward(model, ids[None]).logits.shape == (1, 1, 2, 40479)
    model.save_pretrained(tmp_path)
    assert gpt_fast.OpenAIGPTDoubleHeadsModel.from_pretrained(tmp_path).config.vocab_size == 40479


def test_resize_untied_head():
    hf, ours = load_pair(LM, "eager", tie_word_embeddings=False)
    assert ours.lm_head.weight is not ours.transformer.tokens_embed.weight
    old_head = ours.lm_head.weight.detach().clone()
    ours.resize_token_embeddings(101, mean_resizing=False)
    assert ours.lm_head.weight.shape == (101, 32) and ours.lm_head.weight is not ours.transformer.tokens_embed.weight
    torch.testing.assert_close(ours.lm_head.weight[:99], old_head, rtol=0, atol=0)
    with pytest.raises(ValueError, match="new_num_tokens"):
        ours.resize_token_embeddings(0)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_new_token_rows_filled_in_through_data_after_generating(backend, dtype):
    """A common recipe: resize, then fill the new rows through `.data`, which bumps no version counter. The tied
    LM head's packed copy made by an earlier generate() must not survive it (weight_cache's probe)."""
    hf, ours = load_pair(LM, backend)
    hf, ours = hf.to(dtype), ours.to(dtype)
    prompt = random_ids((1, 5))
    for model in (hf, ours):
        model.resize_token_embeddings(101, mean_resizing=False)
    ours.generate(prompt, max_new_tokens=3)  # packs the new LM head (and the blocks' weights) for decoding
    for model in (hf, ours):
        embeddings = model.get_input_embeddings().weight
        embeddings.data[99:] = 4 * embeddings.data[prompt[0, -1]]  # the new tokens score high
    got = ours.generate(prompt, max_new_tokens=3, output_scores=True, return_dict_in_generate=True)
    expected = hf.generate(prompt, max_new_tokens=3, output_scores=True, return_dict_in_generate=True,
                           pad_token_id=0)
    for a, b in zip(got.scores, expected.scores):
        assert a.shape == b.shape == (1, 101)
        torch.testing.assert_close(a.float(), b.float(), atol=0.05 if dtype == torch.bfloat16 else 1e-4, rtol=0.02)
    assert (got.sequences[0, 5:] >= 99).any()  # the test really reaches the new rows


@pytest.mark.parametrize("head", [LM, DOUBLE])
def test_gradient_checkpointing_gives_the_same_gradients(head):
    _, ours = load_pair(head, "sdpa")
    ids = random_ids(shape_for(head))
    kwargs = dict(labels=ids, mc_labels=torch.tensor([0, 2])) if head == DOUBLE else dict(labels=ids)
    block_calls = []
    ours.transformer.h[0].register_forward_pre_hook(lambda *args: block_calls.append(1))

    def gradients():
        ours.zero_grad()
        torch.manual_seed(3)  # dropout is on: the recomputed forward must draw the same masks
        out = ours(ids, **kwargs)
        (out.loss + (out.mc_loss if head == DOUBLE else 0)).backward()
        return {name: p.grad.clone() for name, p in ours.named_parameters()}

    ours.train()
    plain = gradients()
    assert len(block_calls) == 1 and not ours.is_gradient_checkpointing
    ours.gradient_checkpointing_enable()
    assert ours.is_gradient_checkpointing
    checkpointed = gradients()
    assert len(block_calls) == 3  # the block ran again in the backward pass
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
    ours.gradient_checkpointing_disable()
    gradients()
    assert len(block_calls) == 4


def test_reentrant_checkpointing_with_frozen_embeddings_needs_input_require_grads():
    """Adapter-style training: the embeddings frozen, reentrant checkpointing. Without enable_input_require_grads the
    loss has no graph (PyTorch's error); with it the blocks' gradients equal those without checkpointing."""
    _, ours = load_pair(LM, "fused", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    ids = random_ids((2, 7))
    for table in (ours.transformer.tokens_embed, ours.transformer.positions_embed):
        table.weight.requires_grad_(False)

    def block_gradient():
        ours.zero_grad()
        ours(ids, labels=ids).loss.backward()
        return ours.transformer.h[0].mlp.c_fc.weight.grad.clone()

    plain = block_gradient()
    ours.train().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(RuntimeError, match="does not require grad"):
        block_gradient()
    ours.enable_input_require_grads()
    torch.testing.assert_close(block_gradient(), plain, atol=1e-6, rtol=1e-5)
    ours.disable_input_require_grads()
    assert not ours.transformer.tokens_embed._forward_hooks


def test_from_pretrained_options_match_transformers(tmp_path):
    hf = hf_model(LM)
    hf.save_pretrained(tmp_path / "sub")
    theirs, their_info = transformers.OpenAIGPTLMHeadModel.from_pretrained(
        tmp_path, subfolder="sub", vocab_size=120, ignore_mismatched_sizes=True, output_loading_info=True)
    ours, info = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(
        tmp_path, subfolder="sub", vocab_size=120, ignore_mismatched_sizes=True, output_loading_info=True)
    assert isinstance(info, dict)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert sorted(info[key]) == sorted(their_info[key]), key
    assert ours.config.vocab_size == 120 and ours.lm_head.weight is ours.transformer.tokens_embed.weight
    assert "subfolder" not in ours.config.to_dict()
    torch.testing.assert_close(ours.transformer.h[1].mlp.c_fc.weight, hf.transformer.h[1].mlp.c_fc.weight)
    with pytest.raises(ValueError, match="ignore_mismatched_sizes"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path / "sub", vocab_size=120)
    assert gpt_fast.AutoModelForCausalLM.from_pretrained(tmp_path, subfolder="sub").config.vocab_size == 99
    assert gpt_fast.AutoConfig.from_pretrained(tmp_path, subfolder="sub").vocab_size == 99
    with pytest.raises(FileNotFoundError, match="subfolder 'nope'"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path, subfolder="nope")


def test_config_to_json_file(tmp_path):
    config = gpt_fast.OpenAIGPTConfig(n_embd=48, n_head=6, custom_key=[1, 2])
    path = config.to_json_file(tmp_path / "c.json")
    assert gpt_fast.OpenAIGPTConfig.from_json_file(path) == config
    assert transformers.OpenAIGPTConfig.from_json_file(str(path)).n_embd == 48
    assert json.loads(path.read_text())["custom_key"] == [1, 2]
    with pytest.raises(IsADirectoryError):
        config.to_json_file(tmp_path)


def test_checkpointing_every_n_layers_and_bad_values():
    _, ours = load_pair(LM, "sdpa")
    ids = random_ids((2, 7))
    calls = {0: [], 1: []}
    for i in calls:
        ours.transformer.h[i].register_forward_pre_hook(lambda *args, i=i: calls[i].append(1))
    ours.train()
    ours.activation_checkpointing_enable(every_n_layers=2)  # blocks 0, 2, 4, ...
    ours(ids, labels=ids).loss.backward()
    assert (len(calls[0]), len(calls[1])) == (2, 1)
    with torch.no_grad():  # nothing to recompute without gradients
        ours(ids)
    assert (len(calls[0]), len(calls[1])) == (3, 2)
    with pytest.raises(ValueError, match="every_n_layers"):
        ours.activation_checkpointing_enable(every_n_layers=0)


def test_name_or_path_is_what_from_pretrained_loaded(tmp_path):
    hf, _ = load_pair(LM, "sdpa")
    hf.save_pretrained(tmp_path)
    theirs = transformers.OpenAIGPTLMHeadModel.from_pretrained(tmp_path)
    ours = gpt_fast_class(LM).from_pretrained(tmp_path)
    assert ours.name_or_path == ours.config.name_or_path == theirs.name_or_path == str(tmp_path)
    assert gpt_fast_class(LM)(ours.config.__class__()).name_or_path == ""


def custom_head(base):
    """transformers' custom-head pattern on `base`'s OpenAIGPTPreTrainedModel / OpenAIGPTModel."""

    class Regressor(base.OpenAIGPTPreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.transformer = base.OpenAIGPTModel(config)
            self.norm = torch.nn.LayerNorm(config.n_embd)
            self.tags = torch.nn.Embedding(5, config.n_embd, padding_idx=0)
            self.score = torch.nn.Linear(config.n_embd, 1)
            self.post_init()

        def forward(self, input_ids):
            hidden = self.transformer(input_ids).last_hidden_state[:, -1] + self.tags.weight[1]
            return self.score(self.norm(hidden)).squeeze(-1)

    return Regressor


def test_custom_head_on_the_pretrained_class(tmp_path):
    """A custom head built as on transformers (its __init__ takes the config alone and ends with post_init):
    from_pretrained fills the base model and initialises the new modules as transformers' _init_weights does."""
    hf, _ = load_pair(LM, "sdpa")
    hf.save_pretrained(tmp_path)
    ours = custom_head(gpt_fast).from_pretrained(tmp_path, attn_implementation="eager")
    theirs = custom_head(transformers).from_pretrained(tmp_path)
    assert ours.attn_implementation == "eager"
    for model in (ours, theirs, custom_head(gpt_fast)(gpt_fast.OpenAIGPTConfig(**TINY))):
        assert torch.equal(model.norm.weight, torch.ones(TINY["n_embd"])) and not model.norm.bias.any()
        assert not model.score.bias.any() and not model.tags.weight[0].any()
        assert 0.5 < float(model.score.weight.std() / model.config.initializer_range) < 1.5  # normal(0, range)
    with torch.no_grad():
        ours.score.weight.copy_(theirs.score.weight), ours.tags.weight.copy_(theirs.tags.weight)
        ids = random_ids((2, 6))
        torch.testing.assert_close(ours(ids), theirs(ids), atol=1e-5, rtol=1e-5)
    ours.save_pretrained(tmp_path / "custom")
    again = custom_head(gpt_fast).from_pretrained(tmp_path / "custom")  # the default backend: fp32 rounding apart
    with torch.no_grad():
        torch.testing.assert_close(again(ids), ours(ids), atol=1e-5, rtol=1e-5)


def test_config_diff_and_attribute_map():
    config = gpt_fast.OpenAIGPTConfig(n_layer=3, pad_token_id=0)
    assert config.to_diff_dict() == {"model_type": "openai-gpt", "n_layer": 3, "pad_token_id": 0}
    assert json.loads(config.to_json_string(use_diff=True)) == config.to_diff_dict()
    assert json.loads(config.to_json_string()) == json.loads(json.dumps(config.to_dict()))
    assert config.attribute_map == transformers.OpenAIGPTConfig.attribute_map
    for alias, name in config.attribute_map.items():
        assert getattr(config, alias) == getattr(config, name)


def test_accelerate_fsdp_auto_wrap_wraps_each_block():
    from accelerate.utils import FullyShardedDataParallelPlugin

    _, ours = load_pair(LM, "sdpa")
    plugin = FullyShardedDataParallelPlugin(auto_wrap_policy="transformer_based_wrap")
    plugin.set_auto_wrap_policy(ours)
    assert plugin.auto_wrap_policy.keywords["transformer_layer_cls"] == {type(ours.transformer.h[0])}
