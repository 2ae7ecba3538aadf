"""gpt_fast: OpenAI GPT (GPT-1) as a drop-in for transformers' OpenAIGPT* classes, with fused kernels."""

from gpt_fast.auto import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMultipleChoice,
                           AutoModelForSequenceClassification, AutoTokenizer)
from gpt_fast.batch_encoding import BatchEncoding
from gpt_fast.configuration import OpenAIGPTConfig
from gpt_fast.heads import OpenAIGPTDoubleHeadsModel, OpenAIGPTForSequenceClassification, OpenAIGPTLMHeadModel
from gpt_fast.modeling import OpenAIGPTModel
from gpt_fast.ops import extension_loaded
from gpt_fast.pipeline import pipeline  # the function; its module stays importable as gpt_fast.pipeline
from gpt_fast.pretrained import OpenAIGPTPreTrainedModel
from gpt_fast.streaming import TextIteratorStreamer, TextStreamer
from gpt_fast.tokenizer import OpenAIGPTTokenizer, OpenAIGPTTokenizerFast

__version__ = "0.1.0"

__all__ = [
    "AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForMultipleChoice",
    "AutoModelForSequenceClassification", "AutoTokenizer", "BatchEncoding", "OpenAIGPTConfig",
    "OpenAIGPTDoubleHeadsModel",
    "OpenAIGPTForSequenceClassification", "OpenAIGPTLMHeadModel", "OpenAIGPTModel", "OpenAIGPTPreTrainedModel",
    "OpenAIGPTTokenizer", "OpenAIGPTTokenizerFast", "TextIteratorStreamer", "TextStreamer", "extension_loaded",
    "pipeline",
]
