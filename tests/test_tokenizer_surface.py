"""The rest of transformers' tokenizer surface, against transformers' OpenAIGPTTokenizerFast on the same (packaged)
GPT-1 files: the packaged files themselves, pairs, the optional returned features, add_tokens, pad and the data
collators built on it, word_ids, model_max_length and what save_pretrained keeps."""

import hashlib
import json

import numpy
import pytest
import torch

import gpt_fast
from gpt_fast.tokenization import tokenizer_files
from gpt_fast.tokenization.tokenizer import VERY_LARGE_INTEGER, OpenAIGPTTokenizerFast
from gpt_fast.tokenization.tokenizer_files import PACKAGED_FOLDER

transformers = pytest.importorskip("transformers")
TEXTS = ["Hello world, this is fine!", "a", "Don't stop-me now: 3.14 naïve"]
PAIRS = ["b c!", "the second text is longer than the first", "x"]


@pytest.fixture(scope="module")
def pair():
    ours = OpenAIGPTTokenizerFast.from_pretrained(PACKAGED_FOLDER)
    theirs = transformers.OpenAIGPTTokenizerFast.from_pretrained(str(PACKAGED_FOLDER))
    return ours, theirs


@pytest.fixture
def padded_pair():
    ours = OpenAIGPTTokenizerFast.from_pretrained(PACKAGED_FOLDER)
    theirs = transformers.OpenAIGPTTokenizerFast.from_pretrained(str(PACKAGED_FOLDER))
    ours.pad_token = theirs.pad_token = "<unk>"
    return ours, theirs


def assert_same(actual, expected):
    assert list(actual.keys()) == list(expected.keys())
    for key in expected:
        if isinstance(expected[key], (torch.Tensor, numpy.ndarray)):
            assert type(actual[key]) is type(expected[key]), key
            torch.testing.assert_close(torch.as_tensor(actual[key]), torch.as_tensor(expected[key]), rtol=0, atol=0)
        else:
            assert actual[key] == expected[key], key


def test_packaged_files_are_the_published_ones():
    for name, digest in tokenizer_files.PACKAGED_SHA256.items():
        assert hashlib.sha256((PACKAGED_FOLDER / name).read_bytes()).hexdigest() == digest, name
    assert digest == "0ea9b51ae695073cd871e0358f7016311d671a7ff3963e367d5236522f294725"  # as in NOTICE
    assert "MIT License" in (PACKAGED_FOLDER / "NOTICE").read_text()


@pytest.mark.parametrize("name", ["openai-community/openai-gpt", "openai-gpt"])
def test_published_names_load_offline(name, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(gpt_fast.tokenization.tokenizer, "resolve_model_folder", no_hub)
    monkeypatch.setattr(gpt_fast.auto, "resolve_model_folder", no_hub)
    for tok in (OpenAIGPTTokenizerFast.from_pretrained(name), gpt_fast.AutoTokenizer.from_pretrained(name)):
        assert len(tok) == 40478 and tok.name_or_path == name
        assert tok.decode(tok.encode("Hello, world!")) == "hello , world !"


@pytest.mark.parametrize("kwargs", [
    {}, dict(return_token_type_ids=True), dict(return_special_tokens_mask=True, return_length=True),
    dict(return_token_type_ids=True, return_tensors="pt", padding=True),
    dict(truncation=True, max_length=6), dict(truncation="only_first", max_length=9),
    dict(truncation="longest_first", max_length=7, return_token_type_ids=True, padding="max_length"),
    dict(return_length=True, padding=True, return_special_tokens_mask=True, verbose=False),
])
def test_pairs_and_features_match(padded_pair, kwargs):
    ours, theirs = padded_pair
    assert_same(ours(TEXTS, PAIRS, **kwargs), theirs(TEXTS, PAIRS, **kwargs))
    assert_same(ours(TEXTS[0], PAIRS[0], **kwargs), theirs(TEXTS[0], PAIRS[0], **kwargs))
    assert_same(ours(TEXTS, **kwargs), theirs(TEXTS, **kwargs))
    as_items = [[text, pair] for text, pair in zip(TEXTS, PAIRS)]  # a batch of pairs as `text` alone (zero-shot's)
    assert_same(ours(as_items, **kwargs), theirs(as_items, **kwargs))
    assert_same(ours(as_items, **kwargs), ours(TEXTS, PAIRS, **kwargs))


def test_encode_and_tokenize_pairs_match(pair):
    ours, theirs = pair
    assert ours.encode(TEXTS[2], PAIRS[2]) == theirs.encode(TEXTS[2], PAIRS[2])
    assert ours.tokenize(TEXTS[2], PAIRS[2]) == theirs.tokenize(TEXTS[2], PAIRS[2])


def test_truncation_left_of_a_pair_matches(padded_pair):
    ours, theirs = padded_pair
    ours.truncation_side = theirs.truncation_side = "left"
    assert_same(ours(TEXTS, PAIRS, truncation=True, max_length=5), theirs(TEXTS, PAIRS, truncation=True, max_length=5))


def test_bad_pairs(pair):
    ours, _ = pair
    with pytest.raises(TypeError, match="text_pair"):
        ours(TEXTS, PAIRS[:2])
    with pytest.raises(TypeError, match="text_pair"):
        ours("a", PAIRS)


def test_word_ids_match(padded_pair):
    ours, theirs = padded_pair
    for args, kwargs in (((TEXTS,), dict(padding=True)), ((TEXTS, PAIRS), {}), ((TEXTS[2],), {})):
        mine, expected = ours(*args, **kwargs), theirs(*args, **kwargs)
        for row in range(len(expected["input_ids"]) if isinstance(args[0], list) else 1):
            assert mine.word_ids(row) == expected.word_ids(row)
            assert mine.sequence_ids(row) == expected.sequence_ids(row)
            assert mine.tokens(row) == expected.tokens(row)
    with pytest.raises(ValueError, match="word_ids"):
        ours.pad({"input_ids": [[1, 2]]}).word_ids()


def test_add_tokens_matches(pair):
    ours = OpenAIGPTTokenizerFast.from_pretrained(PACKAGED_FOLDER)
    theirs = transformers.OpenAIGPTTokenizerFast.from_pretrained(str(PACKAGED_FOLDER))
    for args in ((["newtok", "hello"],), ("another",), (["special1"], True), (["newtok"],)):
        assert ours.add_tokens(*args) == theirs.add_tokens(*args), args
    assert len(ours) == len(theirs) and ours.get_added_vocab() == theirs.get_added_vocab()
    text = "a newtok b special1 Newtok ANOTHER"
    ids = theirs(text)["input_ids"]
    assert ours(text)["input_ids"] == ids
    for skip in (False, True):
        assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    with pytest.raises(TypeError, match="add_tokens"):
        ours.add_tokens(3)


@pytest.mark.parametrize("kwargs", [
    {}, dict(return_tensors="pt"), dict(padding="max_length", max_length=6), dict(pad_to_multiple_of=4,
                                                                                 return_tensors="np"),
    dict(padding=False), dict(padding="max_length"), dict(return_attention_mask=False, padding_side="left"),
])
def test_pad_matches(padded_pair, kwargs):
    ours, theirs = padded_pair
    examples = [{"input_ids": [5, 6, 7], "special_tokens_mask": [0, 0, 0], "token_type_ids": [0, 0, 1], "labels": 1},
                {"input_ids": [8], "special_tokens_mask": [1], "token_type_ids": [1], "labels": 0}]
    assert_same(ours.pad(examples, **kwargs), theirs.pad(examples, **kwargs))
    as_dict = {"input_ids": [[5, 6, 7], [8]], "attention_mask": [[1, 1, 0], [1]]}
    assert_same(ours.pad(as_dict, **kwargs), theirs.pad(as_dict, **kwargs))
    for single in ({"input_ids": torch.tensor([5, 6])}, {"input_ids": [5, 6]}):  # one example: one row, unbatched
        assert_same(ours.pad(single, padding="max_length", max_length=4),
                    theirs.pad(single, padding="max_length", max_length=4))
    as_tensors = [{key: torch.tensor(value) for key, value in example.items()} for example in examples]
    if kwargs.get("padding") in (False, "max_length") and "max_length" not in kwargs:  # nothing pads: ragged rows
        for tok in (ours, theirs):
            with pytest.raises(ValueError):
                tok.pad(as_tensors, **kwargs)
    else:
        assert_same(ours.pad(as_tensors, **kwargs), theirs.pad(as_tensors, **kwargs))


def test_pad_errors(pair, padded_pair):
    with pytest.raises(ValueError, match="pad token"):
        pair[0].pad([{"input_ids": [1, 2]}, {"input_ids": [3]}])
    ours, _ = padded_pair
    with pytest.raises(ValueError, match="input_ids"):
        ours.pad({"attention_mask": [[1]]})
    with pytest.raises(ValueError, match="different lengths"):
        ours.pad([{"input_ids": [1, 2]}, {"input_ids": [3]}], padding=False, return_tensors="pt")


@pytest.mark.parametrize("collator", ["DataCollatorForLanguageModeling", "DataCollatorWithPadding"])
def test_data_collators_work_with_it(padded_pair, collator):
    ours, theirs = padded_pair
    make = getattr(transformers, collator)
    kwargs = dict(mlm=False) if collator == "DataCollatorForLanguageModeling" else {}
    for features in ([ours(t) for t in TEXTS], [ours(t, return_special_tokens_mask=True) for t in TEXTS]):
        expected = make(theirs, **kwargs)([dict(f) for f in features])
        assert_same(make(ours, **kwargs)([dict(f) for f in features]), expected)
    lists = [ours.encode(t) for t in TEXTS]
    if collator == "DataCollatorForLanguageModeling":  # lists of ids are padded by the collator itself
        assert_same(make(ours, **kwargs)(lists), make(theirs, **kwargs)(lists))


def test_model_max_length_as_transformers(tmp_path, pair):
    ours, theirs = pair
    assert ours.model_max_length == theirs.model_max_length == VERY_LARGE_INTEGER
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((PACKAGED_FOLDER / name).read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "openai-gpt", "n_positions": 512}))
    assert (OpenAIGPTTokenizerFast.from_pretrained(tmp_path).model_max_length
            == transformers.OpenAIGPTTokenizerFast.from_pretrained(str(tmp_path)).model_max_length)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
    assert (OpenAIGPTTokenizerFast.from_pretrained(tmp_path).model_max_length
            == transformers.OpenAIGPTTokenizerFast.from_pretrained(str(tmp_path)).model_max_length == 512)


def saved_config(tok, folder):
    tok.save_pretrained(folder)
    return json.loads((folder / "tokenizer_config.json").read_text())


@pytest.mark.parametrize("given", [{}, dict(padding_side="left"), dict(truncation_side="left", padding_side="right")])
def test_save_keeps_sides_as_transformers(tmp_path, given):
    ours = OpenAIGPTTokenizerFast.from_pretrained(PACKAGED_FOLDER, **given)
    theirs = transformers.OpenAIGPTTokenizerFast.from_pretrained(str(PACKAGED_FOLDER), **given)
    for tok in (ours, theirs):
        tok.padding_side = "left"  # set after loading: transformers saves it only when it was given
    mine, expected = saved_config(ours, tmp_path / "ours"), saved_config(theirs, tmp_path / "theirs")
    for key in ("padding_side", "truncation_side", "model_max_length"):
        assert mine.get(key) == expected.get(key), key
    for folder in (tmp_path / "ours", tmp_path / "theirs"):
        assert (OpenAIGPTTokenizerFast.from_pretrained(folder).padding_side
                == transformers.OpenAIGPTTokenizerFast.from_pretrained(str(tmp_path / "theirs")).padding_side)


ATTRIBUTES = ["is_fast", "pad_token_type_id", "clean_up_tokenization_spaces", "split_special_tokens",
              "add_prefix_space", "add_bos_token", "add_eos_token", "chat_template", "max_len_single_sentence",
              "max_len_sentences_pair", "added_tokens_encoder", "vocab"]


def test_attributes_tools_read_match_transformers():
    ours = OpenAIGPTTokenizerFast.from_pretrained(PACKAGED_FOLDER, model_max_length=512)
    theirs = transformers.OpenAIGPTTokenizerFast.from_pretrained(str(PACKAGED_FOLDER), model_max_length=512)
    for tokenizer in (ours, theirs):
        tokenizer.add_tokens(["newword"])
        tokenizer.add_special_tokens({"cls_token": "[CLS]"})
    for name in ATTRIBUTES:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert [ours.num_special_tokens_to_add(pair) for pair in (False, True)] == \
        [theirs.num_special_tokens_to_add(pair) for pair in (False, True)] == [0, 0]
    assert {i: str(t) for i, t in ours.added_tokens_decoder.items()} == \
        {i: str(t) for i, t in theirs.added_tokens_decoder.items()}
    assert list(ours.added_tokens_decoder) == [0, 40478, 40479]


def test_apply_chat_template_refuses_as_transformers_does():
    ours = OpenAIGPTTokenizerFast.from_pretrained(PACKAGED_FOLDER)
    theirs = transformers.OpenAIGPTTokenizerFast.from_pretrained(str(PACKAGED_FOLDER))
    conversation = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError) as expected:
        theirs.apply_chat_template(conversation)
    with pytest.raises(ValueError) as got:
        ours.apply_chat_template(conversation)
    assert str(got.value) == str(expected.value)
    with pytest.raises(NotImplementedError, match="does not render chat templates"):
        ours.apply_chat_template(conversation, chat_template="{{ messages }}")


def test_batch_encoding_surface_matches_transformers(padded_pair, caplog):
    """BatchEncoding's row encodings by index, is_fast, n_sequences, convert_to_tensors, and .to() with a dtype
    (APEX calls it), which changes nothing and warns, as transformers'."""
    for call in (lambda t: t(TEXTS, padding=True), lambda t: t(TEXTS, PAIRS, padding=True)):
        ours, theirs = (call(t) for t in padded_pair)
        assert ours[1].ids == theirs[1].ids and ours[0].tokens == theirs[0].tokens
        assert (ours.is_fast, ours.n_sequences) == (theirs.is_fast, theirs.n_sequences)
        for kind in ("pt", "np"):
            assert_same(call(padded_pair[0]).convert_to_tensors(kind), call(padded_pair[1]).convert_to_tensors(kind))
    ours = padded_pair[0](TEXTS, padding=True, return_tensors="pt")
    assert ours.to(torch.float16) is ours and ours["input_ids"].dtype == torch.long
    assert "not supported" in caplog.text
    assert ours.to("cpu")["input_ids"].dtype == torch.long
    padded = padded_pair[0].pad({"input_ids": [[1, 2], [3]]})
    assert not padded.is_fast and padded.n_sequences is None
