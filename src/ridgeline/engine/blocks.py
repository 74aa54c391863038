"""Block manager of a paged KV cache (PagedAttention, Kwon et al. 2023; vLLM's v0 block space manager).

The KV cache is a pool of `num_blocks` physical blocks of `block_size` token slots (the same block id in
every layer). A sequence owns a block table (logical block j -> physical id); token position p lives in
slot table[p // B] * B + p % B. Blocks carry reference counts: fork shares a table (parallel sampling,
beams) and the first write into a shared block copies it (copy-on-write). With prefix caching, a full
block is known by the hash of (its parent block's hash, its tokens); freed cached blocks wait in an LRU
queue where a later request with the same prefix can find them again, until a new allocation evicts them.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

from ridgeline.errors import RidgelineError


class AllocStatus(enum.Enum):
    """Answer of `can_allocate`: fits now, fits once blocks are freed, or can never fit in this pool."""

    OK = "ok"
    LATER = "later"
    NEVER = "never"


def block_hash(parent: bytes | None, tokens: Sequence[int]) -> bytes:
    """Identity of a full block: sha256 of its parent block's hash and its token ids."""
    h = hashlib.sha256(parent or b"root")
    h.update(b"".join(int(t).to_bytes(8, "little", signed=True) for t in tokens))
    return h.digest()


@dataclass
class _Seq:
    table: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)  # hashes of the leading full blocks, once computed
    slots: int = 0  # token slots reserved (positions 0 .. slots-1 have a place)


class BlockManager:
    """Physical KV blocks: free list, reference counts, block tables, copy-on-write and prefix caching."""

    def __init__(self, num_blocks: int, block_size: int = 16, watermark: float = 0.01,
                 prefix_caching: bool = False) -> None:
        if num_blocks < 1 or block_size < 1:
            raise RidgelineError(f"a paged KV cache needs num_blocks >= 1 and block_size >= 1, "
                                 f"got {num_blocks} and {block_size}")
        if not 0 <= watermark < 1:
            raise RidgelineError(f"watermark is a fraction of the pool in [0, 1), got {watermark}")
        self.num_blocks, self.block_size, self.prefix_caching = num_blocks, block_size, prefix_caching
        self.watermark_blocks = int(watermark * num_blocks)
        self.ref = [0] * num_blocks
        self.free_ids: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() hands out block 0 first
        self.cached: dict[bytes, int] = {}  # full-block hash -> block id (prefix cache)
        self.hash_of: dict[int, bytes] = {}  # block id -> its hash while it is in the prefix cache
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached blocks with ref 0, LRU first
        self.seqs: dict[int, _Seq] = {}
        self.hits = 0  # blocks found in the prefix cache
        self.queries = 0  # full prompt blocks looked up

    # -- capacity -------------------------------------------------------------------------------

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold `tokens` token slots."""
        return math.ceil(tokens / self.block_size)

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take now: the free list plus evictable cached blocks."""
        return len(self.free_ids) + len(self.evictable)

    @property
    def num_used(self) -> int:
        """Blocks referenced by at least one sequence."""
        return self.num_blocks - self.num_free

    def can_allocate(self, tokens: int) -> AllocStatus:
        """Whether a new sequence of `tokens` prompt tokens fits: OK now, LATER, or NEVER in this pool."""
        need = self.blocks_for(tokens)
        if self.num_blocks - need < self.watermark_blocks:
            return AllocStatus.NEVER
        # the watermark keeps a few blocks back so running sequences can grow without instant preemption
        return AllocStatus.OK if self.num_free - need >= self.watermark_blocks else AllocStatus.LATER

    def can_append(self, seq_id: int, tokens: int) -> bool:
        """Whether sequence `seq_id` can grow to `tokens` slots (copy-on-write of a shared tail included)."""
        s = self.seqs[seq_id]
        need = max(0, self.blocks_for(tokens) - len(s.table))
        if s.slots % self.block_size and self.ref[s.table[-1]] > 1 and tokens > s.slots:
            need += 1
        return need <= self.num_free

    # -- allocation -----------------------------------------------------------------------------

    def _take(self) -> int:
        if self.free_ids:
            b = self.free_ids.pop()
        elif self.evictable:
            b, _ = self.evictable.popitem(last=False)  # evict the least recently used cached block
            del self.cached[self.hash_of.pop(b)]
        else:
            raise RidgelineError("the KV block pool is exhausted; check can_allocate/can_append first")
        self.ref[b] = 1
        return b

    def _release(self, b: int) -> None:
        if self.ref[b] <= 0:
            raise RidgelineError(f"block {b} freed twice")
        self.ref[b] -= 1
        if self.ref[b] == 0:
            if b in self.hash_of:
                self.evictable[b] = None  # keep its contents for a later prefix hit
            else:
                self.free_ids.append(b)

    def allocate(self, seq_id: int, tokens: Sequence[int], slots: int | None = None) -> int:
        """Give a new sequence blocks for its first `slots` tokens (default: the whole prompt), after the leading
        full blocks the prefix cache already holds; returns how many tokens those hold."""
        if seq_id in self.seqs:
            raise RidgelineError(f"sequence {seq_id} already has blocks")
        if self.can_allocate(len(tokens)) is not AllocStatus.OK:
            raise RidgelineError(f"{len(tokens)} tokens do not fit in the free KV blocks now")
        s = self.seqs[seq_id] = _Seq()
        if self.prefix_caching:
            # the block holding the last prompt token is always computed: its logits start the decode
            parent = None
            for j in range((len(tokens) - 1) // self.block_size):
                h = block_hash(parent, tokens[j * self.block_size:(j + 1) * self.block_size])
                self.queries += 1
                b = self.cached.get(h)
                if b is None:
                    break
                self.hits += 1
                if self.ref[b] == 0:
                    del self.evictable[b]
                self.ref[b] += 1
                s.table.append(b)
                s.hashes.append(h)
                parent = h
        cached = len(s.table) * self.block_size
        s.slots = cached
        self.append_slots(seq_id, max(cached, len(tokens) if slots is None else slots))
        return cached

    def append_slots(self, seq_id: int, tokens: int) -> list[tuple[int, int]]:
        """Grow `seq_id` to `tokens` slots; returns (src, dst) block copies that copy-on-write needs."""
        s = self.seqs[seq_id]
        copies = []
        if tokens > s.slots and s.slots % self.block_size and self.ref[s.table[-1]] > 1:
            # the next write lands in a partly filled block that another sequence shares: copy it first
            old = s.table[-1]
            s.table[-1] = self._take()
            self._release(old)
            copies.append((old, s.table[-1]))
        while len(s.table) < self.blocks_for(tokens):
            s.table.append(self._take())
        s.slots = max(s.slots, tokens)
        return copies

    def commit(self, seq_id: int, tokens: Sequence[int], computed: int) -> None:
        """Record that the first `computed` of `tokens` have KV in the cache: full blocks join the prefix cache."""
        if not self.prefix_caching:
            return
        s = self.seqs[seq_id]
        while len(s.hashes) < computed // self.block_size:
            j = len(s.hashes)
            h = block_hash(s.hashes[-1] if s.hashes else None, tokens[j * self.block_size:(j + 1) * self.block_size])
            s.hashes.append(h)
            b = s.table[j]
            if h not in self.cached and b not in self.hash_of:
                self.cached[h] = b
                self.hash_of[b] = h

    def fork(self, parent_id: int, child_id: int) -> None:
        """Give `child_id` the parent's blocks, shared (reference counts up) until one of them writes."""
        if child_id in self.seqs:
            raise RidgelineError(f"sequence {child_id} already has blocks")
        p = self.seqs[parent_id]
        self.seqs[child_id] = _Seq(list(p.table), list(p.hashes), p.slots)
        for b in p.table:
            self.ref[b] += 1

    def free(self, seq_id: int) -> None:
        """Release all blocks of a finished or preempted sequence."""
        s = self.seqs.pop(seq_id, None)
        if s is None:
            raise RidgelineError(f"sequence {seq_id} holds no blocks (freed twice?)")
        for b in reversed(s.table):  # tail first: the LRU then evicts a prefix's last blocks first
            self._release(b)

    # -- lookup ---------------------------------------------------------------------------------

    def table(self, seq_id: int) -> list[int]:
        """The block table (physical block ids in logical order) of a sequence."""
        return self.seqs[seq_id].table

    def slot_ids(self, seq_id: int, start: int, end: int) -> list[int]:
        """Flat slot indices of positions start .. end-1 of a sequence."""
        t, B = self.seqs[seq_id].table, self.block_size
        return [t[p // B] * B + p % B for p in range(start, end)]

    def check(self) -> None:
        """Assert the invariants: reference counts equal table references; every block free xor used."""
        counts = [0] * self.num_blocks
        for s in self.seqs.values():
            for b in s.table:
                counts[b] += 1
        assert counts == self.ref, "reference counts differ from the block tables"
        free = set(self.free_ids)
        assert len(free) == len(self.free_ids), "a block is on the free list twice"
        assert not free & set(self.evictable), "a block is both free and evictable"
        for b in range(self.num_blocks):
            assert (self.ref[b] == 0) == (b in free or b in self.evictable), f"block {b} is lost or double-owned"
        assert set(self.hash_of) == set(self.cached.values()), "prefix cache maps disagree"
        assert all(b in self.hash_of for b in self.evictable), "an evictable block has no hash"
