"""The models: configuration, the GPT-1 transformer, its task heads, outputs, attention backends and linear
engines. Import from the modules (or from gpt_fast); this package file imports nothing, so no cycle can form."""
