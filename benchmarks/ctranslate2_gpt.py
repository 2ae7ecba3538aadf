"""A GPT-1 state dict (gpt_fast's or transformers') as a CTranslate2 decoder model: the peer of bench_peers.py.

    convert(state_dict, config, "out/ct2")   # then ctranslate2.Generator("out/ct2", compute_type="int8", ...)

GPT-1 maps exactly onto CTranslate2's Transformer decoder spec: post-LayerNorm blocks (pre_norm=False, so
no final norm), tanh-GELU MLP, learned absolute positions (the decoder's position_encodings) added to token
embeddings that are not scaled by sqrt(d), no LayerNorm after the embeddings, and the LM head tied to the token
embedding. Field by field (CTranslate2's LinearSpec stores nn.Linear's (out, in); GPT-1's Conv1D stores (in, out)):

    tokens_embed.weight       -> decoder.embeddings.weight and decoder.projection.weight (the tied LM head)
    positions_embed.weight    -> decoder.position_encodings.encodings
    h.i.attn.c_attn (C, 3C)   -> decoder.layer[i].self_attention.linear[0] (fused q, k, v: the same order)
    h.i.attn.c_proj           -> decoder.layer[i].self_attention.linear[1]
    h.i.ln_1                  -> decoder.layer[i].self_attention.layer_norm (post-norm: after the residual add)
    h.i.mlp.c_fc, mlp.c_proj  -> decoder.layer[i].ffn.linear_0, ffn.linear_1
    h.i.ln_2                  -> decoder.layer[i].ffn.layer_norm

Written for this project from CTranslate2's spec classes (ctranslate2.specs); ctranslate2 is an optional extra
(`pip install gpt_fast[peers]`), imported only here, by benchmarks/bench_peers.py and by the tests.
"""

from __future__ import annotations

import ctranslate2
import numpy as np
import torch


def _array(tensor: torch.Tensor, transpose: bool = False) -> np.ndarray:
    tensor = tensor.detach().to(device="cpu", dtype=torch.float32)
    return np.ascontiguousarray((tensor.t() if transpose else tensor).numpy())


def _linear(spec, state: dict, name: str) -> None:
    spec.weight = _array(state[f"{name}.weight"], transpose=True)  # Conv1D (in, out) -> (out, in)
    spec.bias = _array(state[f"{name}.bias"])


def _layer_norm(spec, state: dict, name: str) -> None:
    spec.gamma = _array(state[f"{name}.weight"])
    spec.beta = _array(state[f"{name}.bias"])


def decoder_spec(state_dict: dict, n_layer: int, n_head: int, layer_norm_epsilon: float = 1e-5,
                 vocabulary: list[str] | None = None):
    """The TransformerDecoderModelSpec holding these weights (float32). Keys with or without the `transformer.`
    prefix; `lm_head.weight` is used when present, else the token embedding (tied). vocabulary: the tokens in id
    order (default: "<0>", "<1>", ...; CTranslate2 needs one string per id)."""
    state = {k.removeprefix("transformer."): v for k, v in state_dict.items()}
    spec = ctranslate2.specs.TransformerDecoderModelSpec.from_config(
        n_layer, n_head, pre_norm=False, activation=ctranslate2.specs.Activation.GELUTanh, no_final_norm=True)
    decoder = spec.decoder
    decoder.scale_embeddings = False  # GPT-1 adds the raw token embedding to the position embedding
    decoder.embeddings.weight = _array(state["tokens_embed.weight"])
    decoder.position_encodings.encodings = _array(state["positions_embed.weight"])
    decoder.projection.weight = _array(state.get("lm_head.weight", state["tokens_embed.weight"]))
    for i, layer in enumerate(decoder.layer):
        _linear(layer.self_attention.linear[0], state, f"h.{i}.attn.c_attn")
        _linear(layer.self_attention.linear[1], state, f"h.{i}.attn.c_proj")
        _layer_norm(layer.self_attention.layer_norm, state, f"h.{i}.ln_1")
        _linear(layer.ffn.linear_0, state, f"h.{i}.mlp.c_fc")
        _linear(layer.ffn.linear_1, state, f"h.{i}.mlp.c_proj")
        _layer_norm(layer.ffn.layer_norm, state, f"h.{i}.ln_2")
    vocab_size = decoder.embeddings.weight.shape[0]
    tokens = vocabulary if vocabulary is not None else [f"<{i}>" for i in range(vocab_size)]
    # GPT-1 has no BOS/EOS: CTranslate2 needs tokens of the vocabulary there; generate_greedy passes no end token.
    unk = "<unk>" if "<unk>" in tokens else tokens[0]
    spec.config.unk_token = spec.config.bos_token = spec.config.eos_token = unk
    spec.config.layer_norm_epsilon = layer_norm_epsilon
    spec.register_vocabulary(tokens)
    spec.validate()
    return spec


def convert(state_dict: dict, config, output_dir: str, vocabulary: list[str] | None = None) -> str:
    """Writes the CTranslate2 model (float32 weights; pick int8 etc. with the Generator's compute_type) to
    output_dir and returns it. config: a gpt_fast or transformers OpenAIGPTConfig."""
    spec = decoder_spec(state_dict, config.n_layer, config.n_head, config.layer_norm_epsilon, vocabulary)
    spec.optimize(quantization="float32")
    spec.save(output_dir)
    return output_dir


def token_strings(ids) -> list[str]:
    """Token ids as the default vocabulary's strings ("<0>", ...), for the calls that take strings only."""
    return [f"<{int(i)}>" for i in ids]


def log_probs(generator, ids: torch.Tensor) -> torch.Tensor:
    """(B, T) ids -> (B, T, V) float32 log-probabilities of the next token at every position (forward_batch)."""
    out = generator.forward_batch(ids.tolist(), return_log_probs=True)
    return torch.as_tensor(np.array(out))


def generate_greedy(generator, prompt_ids, new_tokens: int, on_token=None) -> list[int]:
    """Exactly `new_tokens` greedy token ids after the prompt (batch 1; no end token, as GPT-1 has none).
    on_token(step_result) is called in CTranslate2's decoding loop as each token is chosen."""
    result = generator.generate_batch([token_strings(prompt_ids)], max_length=new_tokens, end_token=[],
                                      include_prompt_in_result=False, beam_size=1, sampling_topk=1,
                                      callback=on_token)
    return result[0].sequences_ids[0]
