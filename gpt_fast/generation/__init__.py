"""Text generation: generate() (generate.py) over a static KV cache (kv_cache.py), the incremental decoder that
runs the model's own blocks (decoder.py), token selection (sampling.py) and streamers (streaming.py). This
package file imports nothing."""
