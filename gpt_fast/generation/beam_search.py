"""Beam search (and beam sampling) over the static KV cache: token-identical to transformers' in fp32.

B prompts x num_beams rows share one StaticKVCache of B * num_beams rows (each prompt is prefilled once per beam,
as transformers expands its input). Per step, in transformers' terms:
  scores = processors(log_softmax(logits)); candidates = the best K = max(2, 1 + #EOS) * num_beams of
  (beam score + scores) over all beams x vocabulary of a prompt (with do_sample, beam sampling: the temperature /
  top-k / top-p warpers join the processors and the K are drawn from softmax(beam score + scores) without
  replacement, then sorted); candidates ending in EOS (or at the last step, or
  stopped by the caller's stopping_criteria) that rank among the first num_beams become finished hypotheses, scored
  sum / new_tokens ** length_penalty, kept if among the best num_beams finished so far; the best num_beams other
  candidates run on: the cache rows, the penalty state and the token history are reordered to their source beams
  in place (index_select of the filled positions into the cache's own tensors, so a captured CUDA graph stays
  valid).
A prompt is done when no running beam can beat its worst finished one (early_stopping=False: at the current
length; "never": at the longest length when length_penalty > 0) or, with early_stopping=True, once it holds
num_beams finished hypotheses; the search ends when every prompt is done or every candidate stopped.

The end test reads the device on the host only every eos_check_interval steps on CUDA (every step elsewhere unless
given); steps run past the end change nothing, since the finished hypotheses are frozen once the search is done.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt_fast.generation.inspection import step_outputs
from gpt_fast.generation.kv_cache import CacheOutputMixin, StaticKVCache
from gpt_fast.generation.prepared import first_done, prepare
from gpt_fast.generation.processors import stop_flags
from gpt_fast.models.outputs import ModelOutput

NEG = -1.0e9  # transformers' "impossible" score


@dataclass
class GenerateBeamOutput(CacheOutputMixin, ModelOutput):
    """As transformers' GenerateBeamDecoderOnlyOutput: sequences (B * num_return_sequences, T + new);
    sequences_scores (B * num_return_sequences,) with output_scores; scores / logits: one (B * num_beams, V) per
    step; beam_indices (B * num_return_sequences, new): the row each new token came from; cache (alias
    past_key_values): the StaticKVCache of the B * num_beams running beams, unless use_cache=False."""

    sequences: torch.Tensor = None
    sequences_scores: torch.Tensor | None = None
    scores: tuple | None = None
    logits: tuple | None = None
    beam_indices: torch.Tensor | None = None
    attentions: tuple | None = None
    hidden_states: tuple | None = None
    cache: StaticKVCache | None = None


def _take(tensor, index):
    """tensor (B, n, ...) gathered along dim 1 by index (B, k) -> (B, k, ...)."""
    return tensor.gather(1, index.view(*index.shape, *([1] * (tensor.dim() - 2))).expand(
        *index.shape, *tensor.shape[2:]))


def _candidates(total, K: int, request):
    """The K candidates of each prompt from total (B, num_beams * V): the best K, or with do_sample (beam sampling)
    K drawn without replacement from softmax(total), as transformers draws them (torch.multinomial, on the
    request's generator or the global one), then sorted best first. Returns (scores, indices), each (B, K)."""
    if not request.sampling.do_sample:
        return torch.topk(total, K)
    drawn = torch.multinomial(torch.softmax(total, dim=-1), K, generator=request.generator)
    drawn_scores, order = total.gather(1, drawn).sort(dim=-1, descending=True)
    return drawn_scores, drawn.gather(1, order)


def beam_search(model, input_ids, attention_mask, types, request):

    nb, lp, early = request.num_beams, request.length_penalty, request.early_stopping
    if types is not None:
        types = types.repeat_interleave(nb, dim=0)
    p = prepare(model, input_ids, attention_mask, request, nb)
    device = input_ids.device
    B, T = input_ids.shape
    R, N, V = B * nb, request.max_new_tokens, model.config.vocab_size
    n_eos = 0 if p.eos_ids is None else p.eos_ids.numel()
    K = max(2, 1 + n_eos) * nb
    pad, eos = request.pad_token_id, request.eos_token_ids
    fill = (pad or eos[0]) if eos is not None else -1  # transformers' filler of unfinished positions

    running = torch.full((B, nb, T + N), fill, dtype=torch.long, device=device)
    running[:, :, :T] = p.input_ids.view(B, nb, T)
    run_scores = torch.zeros(B, nb, device=device)
    run_scores[:, 1:] = NEG  # only the first beam's continuations at the first step
    run_src = torch.full((B, nb, N), -1, dtype=torch.long, device=device)  # the row each new token came from
    fin, fin_scores, fin_src = running.clone(), torch.full((B, nb), NEG, device=device), run_src.clone()
    fin_done = torch.zeros(B, nb, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    searching = torch.ones((), dtype=torch.bool, device=device)  # () False once the search is over (frozen after)
    alive = torch.ones(N, dtype=torch.bool, device=device)
    offsets = (torch.arange(B, device=device) * nb)[:, None]  # (B, 1)
    top_beams = torch.arange(K, device=device) < nb  # (K,)
    snapshots = [] if (request.output_attentions or request.output_hidden_states) else None

    logits = p.first_logits(types, attention_mask is None)  # (R, V)
    step_fn, scores_out, logits_out, steps = None, [], [], 0
    for step in range(N):
        cur = T + step
        if request.output_logits:
            logits_out.append(logits.clone())
        log_probs = torch.log_softmax(logits, dim=-1)
        scores = p.selector.process(log_probs, step, p.extra, lambda r=running, c=cur: r[:, :, :c].reshape(R, c))
        if request.output_scores:
            scores_out.append(scores.clone())
        if snapshots is not None:
            snapshots.append(running[:, :, :cur].reshape(R, cur).clone())
        total = (scores.view(B, nb, V) + run_scores[:, :, None]).view(B, nb * V)
        top_scores, top_index = _candidates(total, K, request)  # (B, K) best first
        source = top_index // V  # (B, K) beam within the prompt
        cand = _take(running, source)  # (B, K, T + N)
        cand[:, :, cur] = top_index % V
        cand_src = _take(run_src, source)
        cand_src[:, :, step] = source + offsets
        hits = torch.zeros(B, K, dtype=torch.bool, device=device) if step < N - 1 else torch.ones(
            B, K, dtype=torch.bool, device=device)
        if p.eos_ids is not None:
            hits |= torch.isin(cand[:, :, cur], p.eos_ids)
        if request.stopping_criteria:
            so_far = tuple(scores_out) if request.output_scores and request.return_dict_in_generate else None
            hits |= stop_flags(request.stopping_criteria, cand[:, :, :cur + 1].reshape(B * K, cur + 1),
                               so_far).view(B, K)

        # the best num_beams candidates that did not stop run on
        live_scores = top_scores + hits.to(torch.float32) * NEG
        keep = torch.topk(live_scores, nb).indices  # (B, nb)
        running, run_scores, run_src = _take(cand, keep), _take(live_scores, keep), _take(cand_src, keep)

        # stopped candidates among the first num_beams join the finished hypotheses if good enough
        just_done = hits & top_beams[None, :]
        done_scores = top_scores / ((step + 1) ** lp)
        done_scores += (fin_done.all(dim=-1, keepdim=True) & (early is True)).to(torch.float32) * NEG
        done_scores += (~improvable).to(torch.float32) * NEG
        done_scores += (~just_done) * NEG
        merged_scores = torch.cat([fin_scores, done_scores], dim=1)
        best = torch.topk(merged_scores, nb).indices
        new_fin = _take(torch.cat([fin, cand], dim=1), best)
        new_fin_scores = _take(merged_scores, best)
        new_fin_src = _take(torch.cat([fin_src, cand_src], dim=1), best)
        new_fin_done = _take(torch.cat([fin_done, just_done], dim=1), best)
        fin = torch.where(searching, new_fin, fin)  # frozen once the search is over (deferred end checks)
        fin_scores = torch.where(searching, new_fin_scores, fin_scores)
        fin_src = torch.where(searching, new_fin_src, fin_src)
        fin_done = torch.where(searching, new_fin_done, fin_done)

        # the running rows take their source beam's cache, penalty state and history
        rows = run_src[:, :, step].reshape(R)
        tokens = running[:, :, cur].reshape(R)
        p.decoder.reorder(rows, cur)
        p.selector.reorder(rows)
        p.selector.add_tokens(tokens)
        if p.history is not None:
            p.history.reorder(rows)
            p.history.append(tokens)

        # is the search over?
        if early == "never" and lp > 0.0:
            best_length = N
        else:
            best_length = step + 1
        best_possible = run_scores[:, :1] / (best_length ** lp)
        worst_done = torch.where(fin_done, fin_scores.min(dim=1, keepdim=True).values, NEG)
        improvable = improvable & (best_possible > worst_done).any(dim=-1, keepdim=True)
        going = improvable.any() & ~(fin_done.all() & (early is True)) & ~hits.all()
        searching = searching & going
        alive[step] = searching
        steps = step + 1
        if steps % p.check_every == 0 and not bool(searching):
            break
        if steps < N:
            if step_fn is None:
                step_fn = p.step_function(R)
            logits = step_fn(tokens)
    steps = first_done(alive, steps)

    n = request.num_return_sequences
    sequences = fin[:, :n].reshape(B * n, T + N)
    sequence_scores = fin_scores[:, :n].reshape(B * n)
    beam_indices = fin_src[:, :n].reshape(B * n, N)
    new_tokens = int((beam_indices >= 0).sum(dim=1).max())
    sequences, beam_indices = sequences[:, :T + new_tokens], beam_indices[:, :new_tokens]
    if not request.return_dict_in_generate:
        return sequences
    attentions, hidden = step_outputs(model, request, snapshots or [], p.attention_mask, types)
    return GenerateBeamOutput(
        sequences=sequences, sequences_scores=sequence_scores if request.output_scores else None,
        scores=tuple(scores_out[:steps]) if request.output_scores else None,
        logits=tuple(logits_out[:steps]) if request.output_logits else None,
        beam_indices=beam_indices, attentions=attentions, hidden_states=hidden,
        cache=p.decoder.cache if request.use_cache else None)
