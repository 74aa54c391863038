"""KV caches that change what is stored: paged blocks, quantized (KIVI, Harmonia BFP), sliding window."""
