"""transformers' Trainer trains a gpt_fast model as it trains transformers' own, with no workaround: the gpt_fast
tokenizer and DataCollatorForLanguageModeling(mlm=False) feed both, gradient accumulation makes the Trainer pass
num_items_in_batch, and the per-step losses (and FLOP counts) of the two runs agree."""

import pytest
import torch

import gpt_fast
from gpt_fast.tokenization.tokenizer_files import PACKAGED_FOLDER

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


def train(model, tokenizer, tmp_path, gradient_checkpointing=False, **options):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=4,
        learning_rate=1e-2, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0,
        dataloader_num_workers=0, disable_tqdm=True, gradient_checkpointing=gradient_checkpointing, **options)
    collator = transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Texts(tokenizer), data_collator=collator)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return [entry["loss"] for entry in logs], trainer.state.total_flos


def padded_tokenizer(tokenizer=None):
    """The gpt_fast GPT-1 tokenizer (or the one given) with a pad token: GPT-1 has none."""
    tokenizer = tokenizer or gpt_fast.OpenAIGPTTokenizerFast.from_pretrained("openai-gpt")
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def model_pair(attn_implementation=None, **config):
    """A seeded transformers LM (CONFIG and config) and gpt_fast's copy of it on that backend."""
    torch.manual_seed(0)
    theirs = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**CONFIG, **config))
    return theirs, gpt_fast.OpenAIGPTLMHeadModel.from_transformers(theirs, attn_implementation=attn_implementation)


def test_trainer_losses_match_transformers(tmp_path):
    tokenizer = padded_tokenizer()
    theirs, ours = model_pair("sdpa")
    expected, expected_flos = train(theirs, tokenizer, tmp_path / "theirs")
    losses, flos = train(ours, tokenizer, tmp_path / "ours")
    assert len(losses) == len(expected) == 4
    assert losses == pytest.approx(expected, abs=1e-3)
    assert losses[-1] < losses[0]  # it learned
    assert flos == expected_flos


@pytest.mark.parametrize("backend", ["sdpa", "fused"])
@pytest.mark.parametrize("options", [dict(neftune_noise_alpha=50.0), dict(label_smoothing_factor=0.5)])
def test_trainer_options_that_act_through_the_model_match_transformers(tmp_path, backend, options):
    """NEFTune adds noise through a forward hook on get_input_embeddings() (so the fused path must call the
    embedding module); label smoothing reads the logits the model returns without labels. Both change the losses."""
    tokenizer = padded_tokenizer()
    theirs, ours = model_pair(backend)
    plain, _ = train(gpt_fast.OpenAIGPTLMHeadModel.from_transformers(theirs, attn_implementation=backend), tokenizer,
                     tmp_path / "plain")
    losses, _ = train(ours, tokenizer, tmp_path / "ours", **options)
    expected, _ = train(theirs, tokenizer, tmp_path / "theirs", **options)
    assert losses == pytest.approx(expected, abs=1e-4)
    assert abs(losses[0] - plain[0]) > 1e-3  # the option acted


def test_trainer_with_gradient_checkpointing(tmp_path):
    tokenizer = padded_tokenizer()
    torch.manual_seed(0)
    base = gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**CONFIG), attn_implementation="sdpa")
    copy = gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**CONFIG), attn_implementation="sdpa")
    copy.load_state_dict(base.state_dict())
    plain, _ = train(base, tokenizer, tmp_path / "plain")
    checkpointed, _ = train(copy, tokenizer, tmp_path / "checkpointed", gradient_checkpointing=True)
    assert copy.is_gradient_checkpointing
    assert checkpointed == pytest.approx(plain, abs=1e-5)


def accuracy(prediction):
    logits, labels = prediction.predictions, prediction.label_ids  # (N, T, V), (N, T)
    hits = (logits[:, :-1].argmax(-1) == labels[:, 1:]) & (labels[:, 1:] != -100)
    return {"next_token_accuracy": float(hits.sum() / (labels[:, 1:] != -100).sum())}


def trainer_for(model, tokenizer, out, **overrides):
    settings = dict(output_dir=str(out), per_device_train_batch_size=2, per_device_eval_batch_size=4, max_steps=4,
                    learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="steps", save_steps=2, seed=0,
                    dataloader_num_workers=0, disable_tqdm=True)
    args = transformers.TrainingArguments(**{**settings, **overrides})
    collator = transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False)
    return transformers.Trainer(model=model, args=args, train_dataset=Texts(tokenizer), eval_dataset=Texts(tokenizer),
                                data_collator=collator, compute_metrics=accuracy)


def test_checkpoints_resume_evaluate_and_predict_as_with_transformers(tmp_path):
    """The Trainer's default saving (a checkpoint every save_steps; it writes a model that is not a transformers
    PreTrainedModel with safetensors.save_file, which refuses a tied head held twice), resuming from it,
    evaluate() with compute_metrics and predict() without labels: the same numbers as transformers' model."""
    tokenizer = padded_tokenizer()
    theirs, ours = model_pair("sdpa")
    results = {}
    for name, model in (("theirs", theirs), ("ours", ours)):
        trainer = trainer_for(model, tokenizer, tmp_path / name)
        trainer.train()
        evaluated = trainer.evaluate()
        unlabelled = [{"input_ids": row["input_ids"]} for row in Texts(tokenizer)]
        predicted = trainer.predict(unlabelled[:4])
        results[name] = (evaluated["eval_loss"], evaluated["eval_next_token_accuracy"], predicted.predictions)
    assert results["ours"][0] == pytest.approx(results["theirs"][0], abs=1e-4)
    assert results["ours"][1] == pytest.approx(results["theirs"][1])
    torch.testing.assert_close(torch.as_tensor(results["ours"][2]), torch.as_tensor(results["theirs"][2]),
                               atol=1e-4, rtol=1e-4)
    assert (tmp_path / "ours" / "checkpoint-2" / "model.safetensors").exists()
    resumed = gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**CONFIG), attn_implementation="sdpa")
    trainer = trainer_for(resumed, tokenizer, tmp_path / "resumed")
    trainer.train(resume_from_checkpoint=str(tmp_path / "ours" / "checkpoint-2"))
    assert trainer.state.global_step == 4 and resumed.lm_head.weight is resumed.transformer.tokens_embed.weight
    torch.testing.assert_close(resumed.transformer.tokens_embed.weight, ours.transformer.tokens_embed.weight)


def test_best_model_at_end_and_save_model(tmp_path):
    """load_best_model_at_end reloads the best checkpoint (here the worst: greater_is_better) as for transformers'
    model; trainer.save_model() writes the weights only (no config.json: the model is not a transformers
    PreTrainedModel), which from_pretrained loads with config= and otherwise refuses with an error that says so."""
    tokenizer = padded_tokenizer()
    theirs, ours = model_pair()
    best = {}
    for name, model in (("theirs", theirs), ("ours", ours)):
        trainer = trainer_for(model, tokenizer, tmp_path / name, max_steps=6, learning_rate=3e-2, eval_strategy="steps",
                              eval_steps=2, load_best_model_at_end=True, metric_for_best_model="loss",
                              greater_is_better=True)  # the highest loss: an early checkpoint, not the last

        trainer.train()
        best[name] = (trainer.state.best_model_checkpoint.rsplit("-", 1)[1], trainer.evaluate()["eval_loss"])
        trainer.save_model(str(tmp_path / name / "final"))
    assert best["ours"][0] == best["theirs"][0] != "6"
    assert best["ours"][1] == pytest.approx(best["theirs"][1], abs=1e-4)
    with pytest.raises(FileNotFoundError, match="Trainer.save_model"):
        gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path / "ours" / "final")
    loaded = gpt_fast.OpenAIGPTLMHeadModel.from_pretrained(tmp_path / "ours" / "final", config=ours.config)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, ours.eval()(ids).logits)


def test_predict_with_ignore_keys_as_with_transformers(tmp_path):
    """With hidden states in the outputs, predict() returns (logits, hidden states), and ignore_keys drops them: the
    Trainer reads ignore_keys only from an output that is a dict (transformers' ModelOutput; gpt_fast's too)."""
    tokenizer = padded_tokenizer()
    theirs, ours = model_pair(output_hidden_states=True)
    rows = [{"input_ids": row["input_ids"]} for row in Texts(tokenizer)][:3]
    for name, model in (("theirs", theirs), ("ours", ours)):
        trainer = trainer_for(model, tokenizer, tmp_path / name, per_device_eval_batch_size=2)
        trainer.compute_metrics = None  # the predictions are a tuple here
        everything, logits_only = trainer.predict(rows), trainer.predict(rows, ignore_keys=["hidden_states"])
        assert isinstance(everything.predictions, tuple) and len(everything.predictions) == 2, name
        assert everything.predictions[0].shape == logits_only.predictions.shape == (3, 11, CONFIG["vocab_size"]), name


def test_trainer_with_a_transformers_tokenizer_as_processing_class(tmp_path):
    """With transformers' own tokenizer as processing_class the Trainer aligns the model's special tokens with it
    (config.get_text_config(), then the config's and the generation config's pad id) before training."""
    tokenizer = padded_tokenizer(transformers.OpenAIGPTTokenizerFast.from_pretrained(str(PACKAGED_FOLDER)))
    theirs, ours = model_pair()
    losses = {}
    for name, model in (("theirs", theirs), ("ours", ours)):
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / name), per_device_train_batch_size=2, max_steps=3, learning_rate=1e-2,
            logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True)
        collator = transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=Texts(tokenizer),
                                       processing_class=tokenizer, data_collator=collator)
        trainer.train()
        losses[name] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        assert model.config.pad_token_id == model.generation_config.pad_token_id == tokenizer.pad_token_id == 0, name
    assert len(losses["ours"]) == 3 and losses["ours"] == pytest.approx(losses["theirs"], abs=1e-3)
