"""Generation engines: paged KV cache with continuous batching."""
