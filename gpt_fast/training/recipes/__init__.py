"""Built-in training runs, `gpt-fast train --recipe NAME`: shakespeare (corpus, BPE and recipe)."""
