"""Generation engines: paged KV cache with continuous batching."""

from ridgeline.engine.blocks import AllocStatus, BlockManager
from ridgeline.engine.engine import Completion, Engine, EngineConfig, RequestOutput, SamplingParams
from ridgeline.engine.serve import (ServeResult, ServeRun, decode_points, place_decode_points, replay, serve_record,
                                    serve_trace, summarize)
from ridgeline.engine.trace import TraceRequest, check_trace, load_trace, prompt_tokens, synthetic_trace

__all__ = ["AllocStatus", "BlockManager", "Completion", "Engine", "EngineConfig", "RequestOutput", "SamplingParams",
           "ServeResult", "ServeRun", "TraceRequest", "check_trace", "decode_points", "load_trace", "place_decode_points", "prompt_tokens",
           "replay", "serve_record", "serve_trace", "summarize", "synthetic_trace"]
