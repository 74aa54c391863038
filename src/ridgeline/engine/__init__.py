"""Generation engines: paged KV cache with continuous batching; batch-1 speculative decoding (Medusa trees, prompt
lookup, draft models) over the `Verifier` interface, and the Medusa heads it drafts with."""

from ridgeline.engine.blocks import AllocStatus, BlockManager
from ridgeline.engine.engine import Completion, Engine, EngineConfig, RequestOutput, SamplingParams
from ridgeline.engine.serve import (ServeResult, ServeRun, decode_points, place_decode_points, replay, serve_record,
                                    serve_trace, summarize)
from ridgeline.engine.trace import TraceRequest, check_trace, load_trace, prompt_tokens, synthetic_trace
from ridgeline.engine.drafters import DraftModelDrafter, MedusaDrafter, PromptLookupDrafter
from ridgeline.engine.hf_verifier import HFVerifier
from ridgeline.engine.medusa_heads import (MedusaHeads, ResBlock, base_info, check_base, check_structure, coverage,
                                          frequent_tokens, load_heads, rank_accuracy, read_heads_manifest, save_heads,
                                          weights_hash)
from ridgeline.engine.spec_runner import (CostCurve, draft_model, first_layers, measure_cost_curve, medusa_decoder,
                                          medusa_tree, spec_runner)
from ridgeline.engine.speculative import (Acceptance, Drafter, SpecDecoder, Verifier, greedy_path, sample_typical,
                                          typical_path, typical_probs)
from ridgeline.engine.tree import Tree, TreeChoice, choose_tree, expected_tokens, grow_tree, parse_tree

__all__ = ["Acceptance", "AllocStatus", "BlockManager", "Completion", "CostCurve", "DraftModelDrafter", "Drafter",
           "Engine", "EngineConfig", "HFVerifier", "MedusaDrafter", "MedusaHeads", "PromptLookupDrafter",
           "RequestOutput", "ResBlock", "SamplingParams", "ServeResult", "ServeRun", "SpecDecoder", "TraceRequest",
           "Tree", "TreeChoice", "Verifier", "base_info", "check_base", "check_structure", "check_trace", "choose_tree",
           "coverage", "decode_points", "draft_model", "expected_tokens", "first_layers", "frequent_tokens",
           "greedy_path", "grow_tree", "load_heads", "load_trace", "measure_cost_curve", "medusa_decoder",
           "medusa_tree", "parse_tree", "place_decode_points", "prompt_tokens", "rank_accuracy", "read_heads_manifest",
           "replay", "sample_typical", "save_heads", "serve_record", "serve_trace", "spec_runner", "summarize",
           "synthetic_trace", "typical_path", "typical_probs", "weights_hash"]
