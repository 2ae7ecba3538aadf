"""compute_transition_scores: the score of each generated token at the step that chose it, as transformers'
GenerationMixin method, from generate()'s `sequences`, per-step `scores` (or `logits`) and, for beam search,
`beam_indices`."""

from __future__ import annotations

import torch


def compute_transition_scores(sequences: torch.Tensor, scores, beam_indices: torch.Tensor | None = None,
                              normalize_logits: bool = False) -> torch.Tensor:
    """(R, N) scores of the last N tokens of sequences (R, T + N): scores[s] (rows, V) is step s's, row
    beam_indices[r, s] of it (row r itself without beam search) chose token sequences[r, T + s]. normalize_logits
    takes log_softmax of each step's scores first. A step a beam did not take (beam index -1, after it finished)
    scores 0. N is the longest beam's length (all of scores without beam search)."""
    if not isinstance(scores, (tuple, list)) or not scores:
        raise ValueError("scores must be generate()'s per-step tuple (return_dict_in_generate=True with "
                         "output_scores=True or output_logits=True)")
    steps = torch.stack(tuple(scores), dim=1).float()  # (rows, S, V)
    if normalize_logits:
        steps = steps.log_softmax(dim=-1)
    rows, S, _ = steps.shape
    if beam_indices is None:
        beam_indices = torch.arange(rows, device=steps.device).unsqueeze(1).expand(rows, S)  # (R, S)
    if beam_indices.dim() != 2 or beam_indices.shape[0] != sequences.shape[0]:
        raise ValueError(f"beam_indices must be (sequences, steps) = ({sequences.shape[0]}, ...), got "
                         f"{tuple(beam_indices.shape)}")
    taken = beam_indices >= 0  # (R, S')
    N = int(taken.sum(dim=1).max()) if taken.numel() else 0
    if N > S or N > sequences.shape[1]:
        raise ValueError(f"{N} generated tokens per sequence, but {S} steps of scores and sequences of "
                         f"{sequences.shape[1]} tokens")
    taken, source = taken[:, :N], beam_indices[:, :N].clamp(min=0)  # (R, N) each
    tokens = sequences[:, sequences.shape[1] - N:]  # (R, N): the generated tokens
    step = torch.arange(N, device=steps.device).expand_as(source)
    chosen = steps[source, step, tokens]  # (R, N)
    return chosen.masked_fill(~taken, 0.0).to(scores[0].dtype)
