"""Model outputs behave as transformers' ModelOutput beyond reading (tests/test_model_parity.py reads them): they
are dicts kept in step with their attributes, torch.nn.DataParallel's gather rebuilds them, they pickle, and they
are pytree nodes, so torch.export returns them and DistributedDataParallel(static_graph=True) synchronizes the
gradients that flow through them."""

import copy
import io
import os
import pickle
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.utils._pytree as pytree
from conftest import DOUBLE, HEADS, TINY, forward, gpt_fast_class, load_pair, random_ids, shape_for

import gpt_fast


@pytest.mark.parametrize("head", HEADS)
def test_an_output_is_a_dict_of_its_set_fields_as_transformers(head):
    hf, ours = load_pair(head, "sdpa")
    ids = random_ids(shape_for(head))
    theirs, mine = forward(hf, ids, output_hidden_states=True), forward(ours, ids, output_hidden_states=True)
    assert isinstance(mine, dict) and isinstance(theirs, dict)
    assert list(dict(mine)) == list(dict(theirs))
    for key in theirs:
        expected = theirs[key] if key != "hidden_states" else theirs[key][-1]
        got = dict(mine)[key] if key != "hidden_states" else dict(mine)[key][-1]
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_setting_a_field_keeps_the_dict_in_declaration_order():
    out = gpt_fast_class("OpenAIGPTLMHeadModel")(gpt_fast.OpenAIGPTConfig(**TINY)).eval()(random_ids((1, 5)))
    loss = torch.tensor(2.5)
    out.loss = loss  # a field before logits: it comes first, so out[0] is the loss as when the model sets it
    assert list(out) == ["loss", "logits"] and out[0] is loss and out["loss"] is loss
    out["loss"] = None  # None clears a field
    assert list(out) == ["logits"] and out.loss is None and "loss" not in out
    out["logits"] = loss
    assert out.logits is loss and out.to_tuple() == (loss,)
    with pytest.raises(KeyError, match="no field 'mc_logits'"):
        out["mc_logits"] = loss
    for refused in (lambda: out.pop("logits"), lambda: out.update(logits=loss), lambda: out.setdefault("loss", 1),
                    lambda: out.__delitem__("logits"), out.clear, out.popitem):
        with pytest.raises(TypeError, match="set or clear one as an attribute"):
            refused()
    assert list(out) == ["logits"]


def test_built_from_name_value_pairs_and_refuses_others():
    cls = gpt_fast.models.outputs.CausalLMOutput
    logits, loss = torch.ones(2, 3), torch.tensor(1.0)
    for pairs in (iter([("logits", logits), ("loss", loss)]), {"logits": logits, "loss": loss}):
        out = cls(pairs)
        assert list(out) == ["loss", "logits"] and out.loss is loss and out.logits is logits
    with pytest.raises(TypeError, match="takes its fields, or"):
        cls(iter([("scores", logits)]))


def test_data_parallel_gather_rebuilds_the_output(monkeypatch):
    """torch.nn.DataParallel (transformers' Trainer on several GPUs without torchrun) gathers the replicas' outputs
    with scatter_gather.gather, which rebuilds a dict as type(out)(pairs). Its device copy needs CUDA, so here it is
    a concatenation (scalars as vectors, as Gather does); the rebuilding is what is tested."""
    from torch.nn.parallel import scatter_gather

    monkeypatch.setattr(scatter_gather.Gather, "apply",
                        lambda device, dim, *parts: torch.cat([torch.atleast_1d(p) for p in parts], dim))
    model = gpt_fast_class(DOUBLE)(gpt_fast.OpenAIGPTConfig(**TINY)).eval()
    halves = [random_ids(shape_for(DOUBLE, B=1), seed=s) for s in (1, 2)]
    parts = [forward(model, ids, labels=ids, output_hidden_states=True) for ids in halves]
    whole = scatter_gather.gather(parts, "cpu")
    assert type(whole) is type(parts[0]) and list(whole) == list(parts[0])
    torch.testing.assert_close(whole.logits, torch.cat([p.logits for p in parts]))
    torch.testing.assert_close(whole.hidden_states[1], torch.cat([p.hidden_states[1] for p in parts]))
    torch.testing.assert_close(whole.loss, torch.stack([p.loss for p in parts]))


@pytest.mark.parametrize("head", HEADS)
def test_an_output_pickles_copies_and_flattens(head):
    model = gpt_fast_class(head)(gpt_fast.OpenAIGPTConfig(**TINY, pad_token_id=0)).eval()
    out = forward(model, random_ids(shape_for(head)), output_attentions=True)
    for again in (pickle.loads(pickle.dumps(out)), copy.deepcopy(out), copy.copy(out)):
        assert type(again) is type(out) and list(again) == list(out)
        for a, b in zip(pytree.tree_leaves(again), pytree.tree_leaves(out)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    leaves, spec = pytree.tree_flatten(out)
    assert len(leaves) == len(out) - 1 + len(out.attentions)  # the tensors inside, not the output as one leaf
    rebuilt = pytree.tree_unflatten([leaf * 2 for leaf in leaves], spec)
    assert type(rebuilt) is type(out) and list(rebuilt) == list(out)
    torch.testing.assert_close(rebuilt[0], out[0] * 2)


def test_torch_export_returns_the_output_and_saves():
    torch.manual_seed(0)
    model = gpt_fast_class("OpenAIGPTLMHeadModel")(gpt_fast.OpenAIGPTConfig(**TINY)).eval()
    length = torch.export.Dim("T", max=TINY["n_positions"])
    program = torch.export.export(model, (random_ids((2, 7)),), dynamic_shapes={"input_ids": {1: length}})
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    for ids in (random_ids((2, 7)), random_ids((2, 13), seed=2)):
        out = loaded(ids)
        assert type(out).__name__ == "CausalLMOutput"
        torch.testing.assert_close(out.logits, forward(model, ids).logits)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, port, static_graph, batches, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**TINY, resid_pdrop=0, embd_pdrop=0,
                                                                       attn_pdrop=0))
        wrapped = torch.nn.parallel.DistributedDataParallel(model, static_graph=static_graph)
        for ids in batches[rank]:  # static_graph learns the graph on the first iteration: run a few
            wrapped.zero_grad()
            wrapped(ids, labels=ids).loss.backward()
        results.put((rank, torch.cat([p.grad.flatten() for p in model.parameters()]).numpy().copy()))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("static_graph", [False, True])
def test_distributed_data_parallel_averages_the_gradients(static_graph):
    """Without the output as a pytree node, static_graph=True left each process its own gradient, silently."""
    batches = [[random_ids((2, 8), seed=10 * rank + step) for step in range(3)] for rank in range(2)]
    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    workers = [context.Process(target=_ddp_worker, args=(rank, port, static_graph, batches, results))
               for rank in range(2)]
    for worker in workers:
        worker.start()
    grads = dict(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    torch.manual_seed(0)
    model = gpt_fast.OpenAIGPTLMHeadModel(gpt_fast.OpenAIGPTConfig(**TINY, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0))
    losses = [model(ids, labels=ids).loss for ids in (batches[0][-1], batches[1][-1])]
    (sum(losses) / 2).backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters()])
    for rank in (0, 1):
        torch.testing.assert_close(torch.from_numpy(grads[rank]), expected, atol=1e-5, rtol=1e-4)
