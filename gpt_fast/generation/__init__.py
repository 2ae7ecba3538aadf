"""Text generation: generate() (generate.py; arguments.py, beam_search.py, processors.py, stop_strings.py, config.py,
inspection.py)
over a static KV cache (kv_cache.py), the incremental decoder that
runs the model's own blocks (decoder.py), token selection (sampling.py), streamers (streaming.py) and each
generated token's score (transition_scores.py). This
package file imports nothing."""
