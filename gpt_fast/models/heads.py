"""The task heads on top of OpenAIGPTModel, with transformers' arguments, outputs and losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpt_fast.generation.config import GenerationConfigMixin
from gpt_fast.generation.generate import generate
from gpt_fast.generation.transition_scores import compute_transition_scores
from gpt_fast.models.configuration import OpenAIGPTConfig
from gpt_fast.models.linear import call_head, project_to_vocab, weight_only_head
from gpt_fast.models.lm_loss import fused_shifted_lm_loss, shifted_lm_loss
from gpt_fast.models.modeling import OpenAIGPTModel
from gpt_fast.models.outputs import CausalLMOutput, OpenAIGPTDoubleHeadsModelOutput, SequenceClassifierOutput
from gpt_fast.models.pretrained import OpenAIGPTPreTrainedModel
from gpt_fast.models.validation import check_integer_tensor, check_same_shape


def sequence_classification_loss(labels, pooled_logits: torch.Tensor, config, num_items_in_batch=None,
                                 ignore_index: int = -100, **kwargs) -> torch.Tensor:
    """The sequence classifier's loss on pooled logits (B, num_labels), by config.problem_type, which is set from the
    labels when None (as transformers' ForSequenceClassificationLoss does): "regression" (MSE), a class id per row
    "single_label_classification" (cross-entropy; ignore_index, and num_items_in_batch as the LM loss), otherwise
    "multi_label_classification" (BCE with logits)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    pooled = pooled_logits
    num_labels = config.num_labels
    labels = labels.to(pooled.device)
    problem = config.problem_type
    if problem is None:
        if num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
        config.problem_type = problem
    if problem == "regression":
        if num_labels == 1:
            return F.mse_loss(pooled.squeeze(), labels.squeeze().to(pooled.dtype))
        check_same_shape("labels", labels, pooled.shape, "the pooled logits")
        return F.mse_loss(pooled, labels.to(pooled.dtype))
    if problem == "single_label_classification":
        check_integer_tensor("labels", labels)
        if labels.numel() != pooled.shape[0]:
            raise ValueError(f"labels must hold one class per row ({pooled.shape[0]}), got {tuple(labels.shape)}")
        flat = pooled.view(-1, num_labels), labels.view(-1)
        if num_items_in_batch is None:
            return F.cross_entropy(*flat, ignore_index=ignore_index)
        return F.cross_entropy(*flat, ignore_index=ignore_index, reduction="sum") / num_items_in_batch
    check_same_shape("labels", labels, pooled.shape, "the pooled logits")
    return F.binary_cross_entropy_with_logits(pooled, labels.to(pooled.dtype))


def _finish(output, return_dict: bool):
    return output if return_dict else output.to_tuple()


class SequenceSummary(nn.Module):
    """One vector per sequence (last, first, mean or a chosen token), optionally projected; as transformers'."""

    def __init__(self, config: OpenAIGPTConfig):
        super().__init__()
        self.summary_type = config.summary_type
        self.summary = nn.Identity()
        if config.summary_use_proj:
            to_labels = config.summary_proj_to_labels and config.num_labels > 0
            self.summary = nn.Linear(config.n_embd, config.num_labels if to_labels else config.n_embd)
        self.activation = nn.Tanh() if config.summary_activation == "tanh" else nn.Identity()
        self.first_dropout = nn.Dropout(config.summary_first_dropout or 0.0)
        self.last_dropout = nn.Dropout(config.summary_last_dropout or 0.0)

    def forward(self, hidden, cls_index=None):  # hidden (B, C, T, E) -> (B, C, out)
        if self.summary_type == "last":
            output = hidden[..., -1, :]
        elif self.summary_type == "first":
            output = hidden[..., 0, :]
        elif self.summary_type == "mean":
            output = hidden.mean(dim=-2)
        else:  # cls_index
            T = hidden.shape[-2]
            if cls_index is None:
                cls_index = torch.full(hidden.shape[:-2], T - 1, dtype=torch.long, device=hidden.device)
            check_integer_tensor("mc_token_ids", cls_index)
            check_same_shape("mc_token_ids", cls_index, hidden.shape[:-2], "(batch, num_choices)")
            in_range = torch.compiler.is_compiling() or not cls_index.numel() or (
                int(cls_index.min()) >= 0 and int(cls_index.max()) < T)
            if not in_range:
                raise IndexError(f"mc_token_ids must lie in [0, {T}), got values {cls_index.min()}..{cls_index.max()}")
            index = cls_index[..., None, None].expand(*cls_index.shape, 1, hidden.shape[-1])
            output = hidden.gather(-2, index).squeeze(-2)
        return self.last_dropout(self.activation(self.summary(self.first_dropout(output))))


def kept_positions(hidden: torch.Tensor, logits_to_keep) -> torch.Tensor:
    """(B, T, C) -> the positions whose logits are made, as transformers' logits_to_keep: an int k, the last k (0:
    all); a tensor, the positions it indexes along T."""
    if isinstance(logits_to_keep, torch.Tensor):
        return hidden[..., logits_to_keep.to(hidden.device), :]
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise TypeError(f"logits_to_keep must be an int >= 0 (the last positions; 0: all) or a tensor of positions, "
                        f"got {logits_to_keep!r}")
    return hidden[..., -logits_to_keep:, :] if logits_to_keep else hidden


class OpenAIGPTLMHeadModel(GenerationConfigMixin, OpenAIGPTPreTrainedModel):
    accepts_loss_kwargs = True  # transformers' Trainer passes num_items_in_batch

    def __init__(self, config: OpenAIGPTConfig, attn_implementation: str | None = None):
        super().__init__(config, attn_implementation)
        self.transformer = OpenAIGPTModel(config, attn_implementation)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.init_weights(skip=self.transformer)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                logits_to_keep: int | torch.Tensor = 0, *, head_mask=None, num_items_in_batch=None,
                ignore_index: int = -100,
                return_logits: bool = True, **kwargs):
        """transformers' arguments in transformers' order (logits_to_keep: the last k positions' logits, 0 = all,
        or a 1-D tensor of the positions to keep); the loss takes its loss kwargs (num_items_in_batch,
        ignore_index, shift_labels) as transformers' causal-LM loss does. return_logits=False (gpt_fast's own)
        with labels: the loss through the fused LM head + cross-entropy (models/lm_loss.py), logits None.
        shift_labels comes through **kwargs, as in transformers' signature: transformers' Trainer takes every
        parameter whose name holds "label" for a label it must find in each batch."""
        shift_labels = kwargs.pop("shift_labels", None)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        out = self.transformer(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, True, head_mask=head_mask, **kwargs)
        hidden = kept_positions(out.last_hidden_state, logits_to_keep)
        without_logits = labels is not None and not return_logits
        if without_logits and weight_only_head(self.lm_head):  # else the head is called: its logits' memory
            loss = fused_shifted_lm_loss(hidden, self.lm_head.weight, labels, num_items_in_batch, ignore_index,
                                         shift_labels)
            return _finish(CausalLMOutput(loss, None, out.hidden_states, out.attentions), return_dict)
        plan = self.transformer.plan(hidden.device, hidden.dtype, blocks=False)
        logits = call_head(self.lm_head, hidden, plan)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = shifted_lm_loss(logits, labels, True, num_items_in_batch, ignore_index, shift_labels)
        logits = None if without_logits else logits
        return _finish(CausalLMOutput(loss, logits, out.hidden_states, out.attentions), return_dict)

    def generate(self, input_ids=None, generation_config=None, **kwargs):
        """transformers-compatible generation over a static KV cache (gpt_fast/generation/generate.py). Positional
        order as transformers': the prompt (`input_ids`, or `inputs=`), then generation_config; the rest by name."""
        return generate(self, input_ids, kwargs.pop("attention_mask", None), generation_config, **kwargs)

    def generate_batch(self, inputs, generation_config=None, **kwargs):
        """transformers' continuous-batching call: prompts as lists of token ids -> {request id: output}, decoded by
        gpt_fast's serving engine (gpt_fast/serving/batch.py)."""
        from gpt_fast.serving.batch import generate_batch  # the serving layer, above the model

        return generate_batch(self, inputs, generation_config, **kwargs)

    def init_continuous_batching(self, generation_config=None, continuous_batching_config=None, **kwargs):
        """transformers' continuous-batching manager on gpt_fast's serving engine (gpt_fast/serving/manager.py)."""
        from gpt_fast.serving import manager  # the serving layer, above the model

        return manager.init_continuous_batching(self, generation_config, continuous_batching_config, **kwargs)

    def continuous_batching_context_manager(self, generation_config=None, **kwargs):
        """A started manager for a `with` block, stopped on leaving it (gpt_fast/serving/manager.py)."""
        from gpt_fast.serving import manager

        return manager.continuous_batching_context_manager(self, generation_config, **kwargs)

    def destroy_cached_continuous_batching_manager(self) -> None:
        from gpt_fast.serving import manager

        manager.destroy_cached_continuous_batching_manager(self)

    def prepare_inputs_for_generation(self, input_ids, **kwargs) -> dict:
        """The forward's inputs for a generation step, as transformers' OpenAIGPT: the ids and the other arguments
        as given (a hand-written loop's `model(**model.prepare_inputs_for_generation(ids, attention_mask=mask))`).
        gpt_fast's own generate() does not use it: it decodes over its static cache."""
        return {"input_ids": input_ids, **{key: value for key, value in kwargs.items() if key != "input_ids"}}

    def compute_transition_scores(self, sequences, scores, beam_indices=None, normalize_logits: bool = False):
        """Each generated token's score at the step that chose it, (R, N), as transformers' method: from generate()'s
        sequences, scores (or logits) and beam_indices (gpt_fast/generation/transition_scores.py)."""
        return compute_transition_scores(sequences, scores, beam_indices, normalize_logits)

    def logits(self, hidden, plan):
        """LM-head logits for hidden (..., C) -> (..., V), through the plan's engine (gpt_fast/models/linear.py)."""
        return project_to_vocab(self.lm_head, hidden, plan)


class OpenAIGPTDoubleHeadsModel(OpenAIGPTPreTrainedModel):
    def __init__(self, config: OpenAIGPTConfig, attn_implementation: str | None = None):
        config.num_labels = 1  # one score per choice, as transformers sets it
        super().__init__(config, attn_implementation)
        self.transformer = OpenAIGPTModel(config, attn_implementation)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.multiple_choice_head = SequenceSummary(config)
        self.init_weights(skip=self.transformer)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                mc_token_ids=None, labels=None, mc_labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, *, head_mask=None, num_items_in_batch=None, return_logits: bool = True, **kwargs):
        """input_ids: (B, num_choices, T); attention_mask (B, num_choices, T) or (B * num_choices, T). Returns LM
        logits (B, C, T, V) and choice scores (B, C). num_items_in_batch is accepted and not used, as in
        transformers (both losses are means). return_logits=False with labels: the LM loss through the fused
        LM head + cross-entropy (in float32), LM logits None."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        out = self.transformer(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, True, head_mask=head_mask, **kwargs)
        hidden = out.last_hidden_state  # (B, C, T, E)
        without_logits = labels is not None and not return_logits
        fused_loss = without_logits and weight_only_head(self.lm_head)
        lm_logits = None if fused_loss else call_head(self.lm_head, hidden,
                                                      self.transformer.plan(hidden.device, hidden.dtype, blocks=False))
        mc_logits = self.multiple_choice_head(hidden, mc_token_ids).squeeze(-1)  # (B, C)
        mc_loss = lm_loss = None
        if mc_labels is not None:
            check_integer_tensor("mc_labels", mc_labels)
            check_same_shape("mc_labels", mc_labels, mc_logits.shape[:-1], "the batch (B,)")
            mc_loss = F.cross_entropy(mc_logits.view(-1, mc_logits.shape[-1]), mc_labels.view(-1))
        if fused_loss:
            lm_loss = fused_shifted_lm_loss(hidden, self.lm_head.weight, labels)
        elif labels is not None:
            lm_loss = shifted_lm_loss(lm_logits, labels, upcast=False)
            lm_logits = None if without_logits else lm_logits
        output = OpenAIGPTDoubleHeadsModelOutput(lm_loss, mc_loss, lm_logits, mc_logits, out.hidden_states,
                                                 out.attentions)
        return _finish(output, return_dict)


class OpenAIGPTForSequenceClassification(OpenAIGPTPreTrainedModel):
    def __init__(self, config: OpenAIGPTConfig, attn_implementation: str | None = None):
        super().__init__(config, attn_implementation)
        self.num_labels = config.num_labels
        self.transformer = OpenAIGPTModel(config, attn_implementation)
        self.score = nn.Linear(config.n_embd, self.num_labels, bias=False)
        self.init_weights(skip=self.transformer)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, *, head_mask=None,
                num_items_in_batch=None, **kwargs):
        """num_items_in_batch is accepted and not used, as in transformers (the loss is a mean over rows)."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        out = self.transformer(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_attentions, output_hidden_states, True, head_mask=head_mask, **kwargs)
        logits = self.score(out.last_hidden_state)  # (B, T, num_labels)
        batch = logits.shape[0]
        pad = self.config.pad_token_id
        if pad is None and batch != 1:
            raise ValueError("Cannot handle batch sizes > 1 if no padding token is defined.")
        if pad is None or input_ids is None:
            last = torch.full((batch,), logits.shape[1] - 1, device=logits.device)
        else:  # the rightmost token that is not padding (handles left and right padding)
            positions = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
            last = (positions * (input_ids != pad).to(logits.device, torch.int32)).argmax(-1)
        pooled = logits[torch.arange(batch, device=logits.device), last]  # (B, num_labels)
        loss = None if labels is None else sequence_classification_loss(labels, pooled, self.config)
        return _finish(SequenceClassifierOutput(loss, pooled, out.hidden_states, out.attentions), return_dict)

    @property
    def loss_function(self):
        """transformers' `model.loss_function(labels, pooled_logits, config, **kwargs)` for this head: the loss its
        forward computes from (B, num_labels) pooled logits."""
        return sequence_classification_loss
