"""gpt_fast: OpenAI GPT (GPT-1) as a drop-in for transformers' OpenAIGPT* classes, with fused kernels.

Layers: ops (kernel wrappers, their references, the kernel plan) -> models (with checkpoints, which load and save
them, and quantization, whose layers replace the models' linear layers) and tokenization -> generation and
training -> patching (transformers' models on gpt_fast's kernels) and cli; no module imports a layer above it, and
no import happens inside a function (but transformers', optional, in patching, and FSDP2's, 0.55 s, on first use in
training/sharding.py). The public API is re-exported here.
"""

from gpt_fast.auto import (
                           AutoConfig,
                           AutoModel,
                           AutoModelForCausalLM,
                           AutoModelForMultipleChoice,
                           AutoModelForSequenceClassification,
                           AutoTokenizer,
)
from gpt_fast.evaluation import PerplexityResult, perplexity
from gpt_fast.generation.config import GenerationConfig
from gpt_fast.generation.feature_extraction import FeatureExtractionPipeline
from gpt_fast.generation.pipeline import TextGenerationPipeline, pipeline
from gpt_fast.generation.streaming import TextIteratorStreamer, TextStreamer
from gpt_fast.models.configuration import OpenAIGPTConfig
from gpt_fast.models.heads import OpenAIGPTDoubleHeadsModel, OpenAIGPTForSequenceClassification, OpenAIGPTLMHeadModel
from gpt_fast.models.modeling import OpenAIGPTModel
from gpt_fast.models.pretrained import OpenAIGPTPreTrainedModel
from gpt_fast.ops import extension_loaded
from gpt_fast.patching import apply_gpt_fast_kernels, revert_gpt_fast_kernels
from gpt_fast.quantization import QuantizationConfig, quantize_model
from gpt_fast.tokenization.batch_encoding import BatchEncoding
from gpt_fast.tokenization.tokenizer import OpenAIGPTTokenizer, OpenAIGPTTokenizerFast
from gpt_fast.training import TrainingConfig, TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForMultipleChoice",
    "AutoModelForSequenceClassification", "AutoTokenizer", "BatchEncoding", "FeatureExtractionPipeline",
    "GenerationConfig", "OpenAIGPTConfig",
    "OpenAIGPTDoubleHeadsModel", "OpenAIGPTForSequenceClassification", "OpenAIGPTLMHeadModel", "OpenAIGPTModel",
    "OpenAIGPTPreTrainedModel", "OpenAIGPTTokenizer", "OpenAIGPTTokenizerFast", "PerplexityResult",
    "QuantizationConfig", "TextGenerationPipeline",
    "TextIteratorStreamer", "TextStreamer", "TrainResult", "TrainingConfig", "apply_gpt_fast_kernels",
    "extension_loaded", "perplexity", "pipeline", "quantize_model", "revert_gpt_fast_kernels", "train",
]
