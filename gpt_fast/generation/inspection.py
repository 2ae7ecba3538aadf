"""output_attentions / output_hidden_states of generate(): transformers' per-step tuples, recomputed through the
model's forward.

transformers re-runs this model over the whole sequence at every step, so its per-step attentions are
(B, H, T + s, T + s) and hidden states (B, T + s, C) for step s. The decode loop never builds those (it attends one
new token over the cache), so they are computed after the loop, only for the calls that ask, by one forward of the
model per step over that step's input: the sequence so far, the attention mask extended with ones and the token
type ids with their last column repeated, as transformers feeds them.
"""

from __future__ import annotations

import torch


def step_outputs(model, request, inputs: list[torch.Tensor], attention_mask, token_type_ids):
    """inputs: the (R, T + s) sequence fed at each step s. Returns (attentions, hidden_states), each None unless
    asked: a tuple over steps of the model's per-layer tuples."""
    if not (request.output_attentions or request.output_hidden_states):
        return None, None
    attentions, hidden = [], []
    T = inputs[0].shape[1] if inputs else 0
    for ids in inputs:
        extra = ids.shape[1] - T
        mask = None if attention_mask is None else torch.cat(
            [attention_mask, attention_mask.new_ones(ids.shape[0], extra)], dim=1)
        types = None if token_type_ids is None else torch.cat(
            [token_type_ids, token_type_ids[:, -1:].expand(-1, extra)], dim=1)
        out = model.transformer(ids, attention_mask=mask, token_type_ids=types,
                                output_attentions=request.output_attentions,
                                output_hidden_states=request.output_hidden_states, return_dict=True)
        attentions.append(out.attentions)
        hidden.append(out.hidden_states)
    return (tuple(attentions) if request.output_attentions else None,
            tuple(hidden) if request.output_hidden_states else None)
