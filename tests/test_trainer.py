"""transformers' Trainer trains a gpt_fast model as it trains transformers' own, with no workaround: the gpt_fast
tokenizer and DataCollatorForLanguageModeling(mlm=False) feed both, gradient accumulation makes the Trainer pass
num_items_in_batch, and the per-step losses (and FLOP counts) of the two runs agree."""

import pytest
import torch

import gpt_fast

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

TEXTS = ["The cat sat on the mat.", "A longer sentence about nothing much at all, really.", "Short one!",
         "Hello world, hello again.", "Numbers 1 2 3 and words.", "the end", "GPT-1 was trained on books.",
         "Padding makes the rows equal."]
CONFIG = dict(vocab_size=40478, n_positions=32, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
              attn_pdrop=0.0)  # no dropout: the two runs must draw the same numbers


class Texts(torch.utils.data.Dataset):
    def __init__(self, tokenizer):
        self.rows = [tokenizer(text, truncation=True, max_length=16) for text in TEXTS]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return dict(self.rows[index])


def train(model, tokenizer, tmp_path, gradient_checkpointing=False):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=4,
        learning_rate=1e-2, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0,
        dataloader_num_workers=0, disable_tqdm=True, gradient_checkpointing=gradient_checkpointing)
    collator = transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Texts(tokenizer), data_collator=collator)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return [entry["loss"] for entry in logs], trainer.state.total_flos


def test_trainer_losses_match_transformers(tmp_path):
    tokenizer = gpt_fast.OpenAIGPTTokenizerFast.from_pretrained("openai-gpt")
    tokenizer.pad_token = tokenizer.unk_token  # GPT-1 has no pad token
    torch.manual_seed(0)
    theirs = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**CONFIG))
    ours = gpt_fast.OpenAIGPTLMHeadModel.from_transformers(theirs, attn_implementation="sdpa")
    expected, expected_flos = train(theirs, tokenizer, tmp_path / "theirs")
    losses, flos = train(ours, tokenizer, tmp_path / "ours")
    assert len(losses) == len(expected) == 4
    assert losses == pytest.approx(expected, abs=1e-3)
    assert losses[-1] < losses[0]  # it learned
    assert flos == expected_flos


def test_trainer_with_gradient_checkpointing(tmp_path):
    tokenizer = gpt_fast.OpenAIGPTTokenizerFast.from_pretrained("openai-gpt")
    tokenizer.pad_token = tokenizer.unk_token
    torch.manual_seed(0)
    base = gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**CONFIG), attn_implementation="sdpa")
    copy = gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**CONFIG), attn_implementation="sdpa")
    copy.load_state_dict(base.state_dict())
    plain, _ = train(base, tokenizer, tmp_path / "plain")
    checkpointed, _ = train(copy, tokenizer, tmp_path / "checkpointed", gradient_checkpointing=True)
    assert copy.is_gradient_checkpointing
    assert checkpointed == pytest.approx(plain, abs=1e-5)
