"""Serving: an OpenAI-compatible server with continuous batching (`gpt-fast serve`).

engine.py (the loop that owns the model; slots.py, prefill.py, prefix_cache.py, sampler.py, speculation.py, text.py,
sequence.py, params.py, observer.py, errors.py) imports no web framework. http.py (FastAPI), protocol.py (request
schemas), responses.py (OpenAI response JSON), chat.py (the chat template) and metrics.py (Prometheus) need
`pip install gpt_fast[serve]` and are imported only by the serve command and by whoever builds the app.
"""

from gpt_fast.serving.engine import Engine, RequestHandle
from gpt_fast.serving.errors import BadRequest, ContextTooLong, QueueFull, ServingError
from gpt_fast.serving.params import SamplingParams
from gpt_fast.serving.sequence import Output

__all__ = ["BadRequest", "ContextTooLong", "Engine", "Output", "QueueFull", "RequestHandle", "SamplingParams",
           "ServingError"]
