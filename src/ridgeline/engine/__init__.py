"""Generation engines: paged KV cache with continuous batching."""

from ridgeline.engine.blocks import AllocStatus, BlockManager
from ridgeline.engine.engine import Completion, Engine, EngineConfig, RequestOutput, SamplingParams
from ridgeline.engine.serve import ServeResult, replay, summarize
from ridgeline.engine.trace import TraceRequest, load_trace, synthetic_trace

__all__ = ["AllocStatus", "BlockManager", "Completion", "Engine", "EngineConfig", "RequestOutput", "SamplingParams",
           "ServeResult", "TraceRequest", "load_trace", "replay", "summarize", "synthetic_trace"]
