"""The metrics log: one JSON object per line (metrics.jsonl: {"step", "loss", "lr", "grad_norm", "tokens",
"tokens_per_s", "elapsed_s"} per step, {"step", "eval_loss", "eval_perplexity"} per evaluation) and the
optional loss-curve PNG drawn from it (matplotlib, the `plot` extra, imported only when asked)."""

from __future__ import annotations

import json
from pathlib import Path

METRICS = "metrics.jsonl"


class MetricsLog:
    """Appends records to output_dir/metrics.jsonl (a resumed run continues the file)."""

    def __init__(self, output_dir: str | Path, enabled: bool = True):
        self.path = Path(output_dir) / METRICS
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path) -> Path:
    """Training (and evaluation) loss against the step, from a metrics.jsonl, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("the loss curve needs matplotlib: pip install gpt_fast[plot]") from error
    records = read_metrics(metrics_path)
    by_step = {r["step"]: r["loss"] for r in records if "loss" in r}  # a resumed run's records replace older ones
    evals = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(list(by_step), list(by_step.values()), label="training loss")
    if evals:
        axes.plot(list(evals), list(evals.values()), "o-", label="evaluation loss")
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy (nats / token)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return Path(png_path)
