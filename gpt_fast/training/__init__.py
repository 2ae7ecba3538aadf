"""Training GPT-1 models with gpt_fast: the Python API that `gpt-fast train` (gpt_fast/cli/train.py) is a thin
layer over. `python -m gpt_fast.training ...` (or `-m gpt_fast.train`) runs the command, also under torchrun.

    from gpt_fast.training import TrainingConfig, train
    result = train(TrainingConfig(train_data=["corpus/"], output_dir="out", model_config={"n_layer": 2}))
"""

from gpt_fast.training.allocator import keep_freed_memory
from gpt_fast.training.config import TrainingConfig
from gpt_fast.training.data import TokenRows, load_tokens
from gpt_fast.training.metrics import plot_loss_curve, read_metrics
from gpt_fast.training.optimizer_in_backward import OptimizerInBackward
from gpt_fast.training.trainer import TrainResult, evaluate, train

__all__ = ["OptimizerInBackward", "TokenRows", "TrainResult", "TrainingConfig", "evaluate", "keep_freed_memory",
           "load_tokens", "plot_loss_curve", "read_metrics", "train"]
