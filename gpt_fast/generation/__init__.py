"""Text generation: generate() (generate.py; arguments.py, beam_search.py, processors.py, stop_strings.py, config.py,
inspection.py)
over a static KV cache (kv_cache.py), the incremental decoder that
runs the model's own blocks (decoder.py), token selection (sampling.py) and streamers (streaming.py). This
package file imports nothing."""
