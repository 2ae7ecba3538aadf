"""`gpt-fast serve`'s HTTP API through the official openai client (and httpx for raw error shapes), against a server
on 127.0.0.1 at an ephemeral port started in the test, serving a tiny random checkpoint saved to a temporary folder.
Expected text comes from model.generate on the same checkpoint."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
import torch
from serve_helpers import SlowTokenizer, save_checkpoint

from gpt_fast import OpenAIGPTLMHeadModel, OpenAIGPTTokenizerFast
from gpt_fast.serving import SamplingParams
from gpt_fast.serving.chat import ChatTemplate
from gpt_fast.serving.http import build_app
from gpt_fast.serving.launch import BackgroundServer

NAME = "tiny-gpt"
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("serve-ckpt"))


@pytest.fixture(scope="module")
def model(checkpoint):
    return OpenAIGPTLMHeadModel.from_pretrained(checkpoint).eval()


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return OpenAIGPTTokenizerFast.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def server(model, tokenizer):
    app, engine = build_app(model, tokenizer, NAME, max_batch=4, max_queue=8, prefill_chunk=8)
    with BackgroundServer(app) as running:
        running.engine = engine
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)


def greedy_text(model, tokenizer, prompt: str, n: int) -> str:
    ids = tokenizer(prompt)["input_ids"]
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n)[0, len(ids):]
    return tokenizer.decode(out.tolist())


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert httpx.get(server.url + "/health", timeout=TIMEOUT).json() == {"status": "ok"}


def test_completion_is_the_models_greedy_text_with_usage(client, model, tokenizer):
    prompt = "the meaning of life is"
    out = client.completions.create(model=NAME, prompt=prompt, max_tokens=10, temperature=0)
    assert out.object == "text_completion" and len(out.choices) == 1
    assert out.choices[0].text == greedy_text(model, tokenizer, prompt, 10)
    assert out.choices[0].finish_reason == "length"
    n_prompt = len(tokenizer(prompt)["input_ids"])
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (n_prompt, 10,
                                                                                                n_prompt + 10)


def test_prompt_lists_token_ids_n_and_seed(client, model, tokenizer):
    prompts = ["hello there", "a second prompt"]
    out = client.completions.create(model=NAME, prompt=prompts, max_tokens=6, n=2, seed=7, temperature=1.0)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    again = client.completions.create(model=NAME, prompt=prompts, max_tokens=6, n=2, seed=7, temperature=1.0)
    assert [c.text for c in out.choices] == [c.text for c in again.choices]  # seeded: reproducible
    assert out.choices[0].text != out.choices[1].text  # the n choices differ
    assert out.usage.completion_tokens == 24
    ids = tokenizer("hello there")["input_ids"]
    by_ids = client.completions.create(model=NAME, prompt=ids, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == greedy_text(model, tokenizer, "hello there", 5)
    only_likeliest = client.completions.create(model=NAME, prompt=ids, max_tokens=5, temperature=1.0, seed=2,
                                               extra_body={"min_p": 1.0})  # vLLM's extension, passed through
    assert only_likeliest.choices[0].text == by_ids.choices[0].text


def test_logit_bias_bans_and_forces_tokens(client, model, tokenizer):
    ids = tokenizer("the meaning of life is")["input_ids"]
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)  # (V,)
    first, second = logprobs.topk(2).indices.tolist()
    banned = client.completions.create(model=NAME, prompt=ids, max_tokens=1, temperature=0, logprobs=0,
                                       logit_bias={str(first): -100})
    assert banned.choices[0].text == tokenizer.decode([second])
    # the reported log-probability is the model's, not the biased one
    assert banned.choices[0].logprobs.token_logprobs[0] == pytest.approx(logprobs[second].item(), abs=1e-4)
    forced = client.completions.create(model=NAME, prompt=ids, max_tokens=3, temperature=1.0, seed=3,
                                       logit_bias={"123": 100})
    assert forced.choices[0].text == tokenizer.decode([123, 123, 123])


def test_streaming_gives_the_same_text_and_usage_last(client):
    kwargs = dict(model=NAME, prompt="once upon a time", max_tokens=12, temperature=0)
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert all(c.usage is None for c in chunks[:-1])


def test_stop_strings(client):
    base = client.completions.create(model=NAME, prompt="once upon a time", max_tokens=12, temperature=0)
    text = base.choices[0].text
    stop = text.split(" ")[3][:2]
    out = client.completions.create(model=NAME, prompt="once upon a time", max_tokens=12, temperature=0, stop=[stop])
    assert out.choices[0].finish_reason == "stop" and out.choices[0].text == text[:text.index(stop)]
    streamed = client.completions.create(model=NAME, prompt="once upon a time", max_tokens=12, temperature=0,
                                         stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text[:text.index(stop)]


def test_logprobs_and_echo(client, model, tokenizer):
    prompt = "the sky is"
    out = client.completions.create(model=NAME, prompt=prompt, max_tokens=4, temperature=0, logprobs=2)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(len(top) <= 2 and max(top.values()) >= chosen - 1e-6
               for top, chosen in zip(lp.top_logprobs, lp.token_logprobs))
    ids = tokenizer(prompt)["input_ids"]
    with torch.inference_mode():
        first = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
    assert lp.token_logprobs[0] == pytest.approx(first.max().item(), abs=1e-4)
    echoed = client.completions.create(model=NAME, prompt=prompt, max_tokens=4, temperature=0, logprobs=0, echo=True)
    choice = echoed.choices[0]
    assert choice.text == prompt + out.choices[0].text
    assert choice.logprobs.token_logprobs[0] is None and len(choice.logprobs.tokens) == len(ids) + 4


def test_chat_with_the_default_template(client, model, tokenizer):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    out = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=0, logprobs=True,
                                         top_logprobs=2)
    prompt = ChatTemplate().render(messages)
    assert prompt == "system: be brief\nuser: hi there\nassistant:"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == greedy_text(model, tokenizer, prompt, 8)
    assert len(out.choices[0].logprobs.content) == 8 and len(out.choices[0].logprobs.content[0].top_logprobs) == 2
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=0,
                                                 stream=True, n=2))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == out.choices[0].message.content
        assert mine[-1].finish_reason == "length"


def test_chat_default_max_tokens_is_the_rest_of_the_context(client, tokenizer):
    messages = [{"role": "user", "content": "hi"}]
    out = client.chat.completions.create(model=NAME, messages=messages, temperature=0)
    assert out.usage.prompt_tokens + out.usage.completion_tokens == 64


@pytest.mark.parametrize("kwargs, param", [
    (dict(temperature=5), "temperature"), (dict(top_p=0), "top_p"), (dict(max_tokens=0), "max_tokens"),
    (dict(logprobs=50), "logprobs"), (dict(n=0), "n"), (dict(n=9), "n"), (dict(logit_bias={"a": 1.0}), "logit_bias"),
    (dict(logit_bias={"5": 101}), "logit_bias"), (dict(logit_bias={"40478": 1}), "logit_bias"),
    (dict(logit_bias={"-3": 1}), "logit_bias"),
    (dict(presence_penalty=-3), "presence_penalty"), (dict(prompt=""), "prompt"),
    (dict(prompt=[40478]), "prompt"), (dict(max_tokens=100), "max_tokens"),
])
def test_bad_parameters_are_400_in_openais_shape(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(**{"model": NAME, "prompt": "hello", **kwargs})
    assert error.value.status_code == 400
    body = error.value.body
    assert body["type"] == "invalid_request_error" and body["param"] == param and body["message"]
    if param == "max_tokens" and kwargs["max_tokens"] == 100:
        assert body["code"] == "context_length_exceeded"


@pytest.mark.parametrize("kwargs, param", [(dict(suffix="!"), "suffix"), (dict(best_of=1, n=2), "best_of"),
                                           (dict(best_of=3, stream=True), "best_of"),
                                           (dict(best_of=10, n=2), "n"),  # 10 candidates > the queue's 8
                                           (dict(stream_options={"include_usage": True}), "stream_options")])
def test_unsupported_completion_fields_are_400(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=NAME, prompt="hello", max_tokens=2, **kwargs)
    assert error.value.body["param"] == param


def test_best_of_returns_the_candidates_with_the_highest_logprob_per_token(client):
    """best_of=4, n=2 with a seed: the candidates are the choices of an n=4 request with that seed (choice i draws
    from seed + i), and the two returned are those with the highest mean log-probability per token, best first;
    every candidate's tokens count in the usage."""
    request = dict(model=NAME, prompt=["once upon a time", "the cat"], max_tokens=6, temperature=1.5, seed=3)
    every = client.completions.create(**request, n=4, logprobs=0)
    best = client.completions.create(**request, n=2, best_of=4)

    def mean(choice):
        return sum(choice.logprobs.token_logprobs) / len(choice.logprobs.token_logprobs)

    for p in range(2):
        candidates = every.choices[4 * p:4 * p + 4]
        ranked = sorted(candidates, key=mean, reverse=True)
        assert len({c.text for c in candidates}) > 2  # the ranking has something to choose from
        assert [c.text for c in best.choices[2 * p:2 * p + 2]] == [c.text for c in ranked[:2]]
    assert [c.index for c in best.choices] == [0, 1, 2, 3]
    assert all(c.logprobs is None for c in best.choices)  # not asked for
    assert best.usage.completion_tokens == every.usage.completion_tokens
    with_logprobs = client.completions.create(**request, n=1, best_of=4, logprobs=1)
    assert with_logprobs.choices[0].text == best.choices[0].text
    assert len(with_logprobs.choices[0].logprobs.top_logprobs[0]) == 1


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize("kwargs, param", [
    (dict(tools=[TOOL]), "tools"), (dict(functions=[TOOL["function"]]), "functions"),
    (dict(tool_choice="required"), "tool_choice"), (dict(response_format={"type": "json_object"}), "response_format"),
    (dict(modalities=["text", "audio"]), "modalities"), (dict(top_logprobs=2), "top_logprobs"),
])
def test_unsupported_chat_fields_are_400(client, kwargs, param):
    """Fields that would change the answer are refused, not dropped; their neutral values are accepted."""
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=NAME, messages=messages, max_tokens=2, **kwargs)
    assert error.value.body["param"] == param
    client.chat.completions.create(model=NAME, messages=messages, max_tokens=2, tool_choice="none",
                                   response_format={"type": "text"}, modalities=["text"])


def test_malformed_bodies_unknown_models_and_paths(client, server):
    raw = httpx.post(server.url + "/v1/completions", content=b"{not json", timeout=TIMEOUT,
                     headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.post(server.url + "/v1/completions", json={"model": NAME}, timeout=TIMEOUT)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "prompt"
    wrong_type = httpx.post(server.url + "/v1/chat/completions", timeout=TIMEOUT,
                            json={"model": NAME, "messages": [{"role": "robot", "content": "x"}]})
    assert wrong_type.status_code == 400
    with pytest.raises(openai.NotFoundError) as error:
        client.completions.create(model="gpt-4", prompt="hello")
    assert error.value.body["code"] == "model_not_found"
    nowhere = httpx.get(server.url + "/v1/nowhere", timeout=TIMEOUT)
    assert nowhere.status_code == 404 and "error" in nowhere.json()


def test_metrics_are_prometheus_text(client, server):
    client.completions.create(model=NAME, prompt="count me", max_tokens=3, temperature=0)
    text = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    for name in ("gpt_fast_http_requests_total", "gpt_fast_generation_tokens_total", "gpt_fast_queue_depth",
                 "gpt_fast_batch_size", "gpt_fast_time_to_first_token_seconds_bucket",
                 "gpt_fast_time_per_output_token_seconds_bucket"):
        assert name in text
    tokens = next(line for line in text.splitlines() if line.startswith("gpt_fast_generation_tokens_total"))
    assert float(tokens.split()[-1]) >= 3


def test_api_key(model, tokenizer):
    app, _ = build_app(model, tokenizer, NAME, max_batch=1, max_queue=2, api_key="sesame")
    with BackgroundServer(app) as running:
        bad = openai.OpenAI(base_url=running.url + "/v1", api_key="wrong", max_retries=0, timeout=TIMEOUT)
        with pytest.raises(openai.AuthenticationError) as error:
            bad.completions.create(model=NAME, prompt="hi", max_tokens=1)
        assert error.value.status_code == 401 and error.value.body["type"] == "authentication_error"
        good = openai.OpenAI(base_url=running.url + "/v1", api_key="sesame", max_retries=0, timeout=TIMEOUT)
        assert good.completions.create(model=NAME, prompt="hi", max_tokens=1).usage.completion_tokens == 1
        assert httpx.get(running.url + "/health", timeout=TIMEOUT).status_code == 200  # open without a key


def test_a_full_queue_is_503(model, tokenizer):
    app, engine = build_app(model, tokenizer, NAME, max_batch=1, max_queue=1, start_engine=False)
    engine.running = True  # submissions accepted but no loop drains them: nothing runs one
    with BackgroundServer(app) as running:
        for _ in range(2):  # one for the free slot, one queued
            engine.submit([1, 2, 3], SamplingParams(max_tokens=1), lambda out: None)
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0, timeout=TIMEOUT)
        with pytest.raises(openai.InternalServerError) as error:
            client.completions.create(model=NAME, prompt="hi", max_tokens=1)
        assert error.value.status_code == 503 and error.value.body["code"] == "queue_full"
        assert httpx.get(running.url + "/health", timeout=TIMEOUT).status_code == 503  # no engine thread


def cancelled_count(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=TIMEOUT).text
    line = next((ln for ln in text.splitlines() if 'reason="cancelled"' in ln and ln.startswith("gpt_fast_seq")), None)
    return float(line.split()[-1]) if line else 0.0


def wait_for(condition, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_client_that_disconnects_frees_its_slot(model, tokenizer):
    app, engine = build_app(model, SlowTokenizer(tokenizer), NAME, max_batch=1, max_queue=4)
    body = {"model": NAME, "prompt": "a long story", "max_tokens": 50, "temperature": 0}
    with BackgroundServer(app) as running:
        with httpx.stream("POST", running.url + "/v1/completions", json={**body, "stream": True},
                          timeout=TIMEOUT) as response:
            first = next(response.iter_lines())
            assert first.startswith("data: ") and json.loads(first[6:])["choices"][0]["finish_reason"] is None
        wait_for(lambda: cancelled_count(running.url) == 1)  # the stream's close cancelled it, mid-way
        with pytest.raises(httpx.ReadTimeout):  # a whole-body request given up by its client
            httpx.post(running.url + "/v1/completions", json=body, timeout=0.3)
        wait_for(lambda: cancelled_count(running.url) == 2)
        assert engine.slots.in_use() == 0
