"""Candidate trees for speculative decoding: structure, attention mask, positions, and the sparse-tree search.

A tree is a root (node 0: the base model's own next token, always kept) and non-root nodes named by their
**paths**: a path (r1, ..., rd) is the node at depth d reached by taking, at each depth j, the candidate of
rank r_j (0 = most likely) of drafter j (Medusa head j predicts the token j positions after the root). Nodes
are stored sorted by (depth, path), so a parent always precedes its children and node indices grow along
every branch. Medusa's `medusa_choices` are such path lists; `Tree.chain(n)` is a single branch of n drafts
(prompt lookup, a draft model).

Verification conventions (the `Verifier.verify` call): node i goes to cache slot L + i, its rope position is
L + depth(i), and it attends every cached position plus its ancestors and itself (`visibility`).

The search follows Medusa's sparse-tree construction: with a[j][r] the measured probability that drafter j's
rank-r candidate is the base's token (independence assumed), a node's chance of being accepted is the product
of a along its path; the tree of n nodes grows greedily by adding the reachable node (first child, or the next
sibling of a node already in) with the highest chance. Expected tokens per verify step = 1 (the base's own
token) + the sum of those chances. Its size is chosen from a measured cost curve: the n maximising
expected tokens / (cost of verifying n + 1 tokens + the drafter's cost, both relative to one plain decode step).
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ridgeline.errors import RidgelineError

#: the most nodes a tree may have (verification of more tokens never pays on a CPU, and keeps masks small)
MAX_NODES = 256


@dataclass(frozen=True)
class Tree:
    """A candidate tree: its non-root nodes as rank paths, sorted by (depth, path)."""

    paths: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        paths = tuple(sorted({tuple(int(r) for r in p) for p in self.paths}, key=lambda p: (len(p), p)))
        if len(paths) != len(self.paths):
            raise RidgelineError("tree: a path appears twice")
        if len(paths) > MAX_NODES:
            raise RidgelineError(f"tree: {len(paths)} nodes, at most {MAX_NODES}")
        present = set(paths)
        for p in paths:
            if not p or any(r < 0 for r in p):
                raise RidgelineError(f"tree: path {list(p)} must be a non-empty list of ranks >= 0")
            if len(p) > 1 and p[:-1] not in present:
                raise RidgelineError(f"tree: path {list(p)} has no parent {list(p[:-1])}")
        object.__setattr__(self, "paths", paths)

    @classmethod
    def chain(cls, n: int) -> Tree:
        """n drafts in a single branch (rank 0 at every depth)."""
        return cls(tuple((0,) * d for d in range(1, n + 1)))

    @property
    def size(self) -> int:
        """Tokens one verification processes: the root plus every node."""
        return len(self.paths) + 1

    @property
    def depth(self) -> int:
        """Deepest node's depth (0 for the root alone): the drafters the tree needs."""
        return max((len(p) for p in self.paths), default=0)

    def ranks_needed(self) -> list[int]:
        """For each depth 1..depth: how many ranked candidates (top-k) that depth's drafter must supply."""
        need = [0] * self.depth
        for p in self.paths:
            need[len(p) - 1] = max(need[len(p) - 1], p[-1] + 1)
        return need

    def depths(self) -> list[int]:
        """Depth of every node, root (0) first."""
        return [0] + [len(p) for p in self.paths]

    def parents(self) -> list[int]:
        """Parent index of every node (the root's is -1)."""
        index = {p: i + 1 for i, p in enumerate(self.paths)}
        return [-1] + [index.get(p[:-1], 0) for p in self.paths]

    def children(self) -> list[list[int]]:
        """Children of every node, in index order."""
        out: list[list[int]] = [[] for _ in range(self.size)]
        for i, parent in enumerate(self.parents()[1:], start=1):
            out[parent].append(i)
        return out

    def visibility(self) -> torch.Tensor:
        """[size, size] bool: node i sees node j iff j is i or an ancestor of i."""
        parents = self.parents()
        vis = torch.eye(self.size, dtype=torch.bool)
        for i in range(1, self.size):
            vis[i] |= vis[parents[i]]
        return vis

    def positions(self, start: int) -> torch.Tensor:
        """Rope positions of the nodes when the cache holds `start` tokens: start + depth."""
        return torch.tensor(self.depths(), dtype=torch.long) + start

    def to_json(self) -> list[list[int]]:
        """The path list (JSON)."""
        return [list(p) for p in self.paths]


def parse_tree(text: str) -> Tree:
    """A tree from a spec: a JSON list of paths ('[[0], [0, 0], [1]]'), a JSON file holding one (or an object with
    a "tree" key), or the compact form '0;0,0;1' (paths separated by ';', ranks by ',')."""
    spec = text.strip()
    if not spec:
        raise RidgelineError("tree spec is empty; expected paths such as '0;0,0;1' or '[[0],[0,0],[1]]'")
    path = Path(spec).expanduser()
    if path.is_file() or not (spec.startswith("[") or any(c in spec for c in ";,") or spec.isdigit()):
        if not path.is_file():
            raise RidgelineError(f"tree spec {text!r} is not a path list ('0;0,0;1' or JSON) nor an existing file")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RidgelineError(f"tree file {path}: not JSON ({exc})") from None
        return _tree_from(data.get("tree") if isinstance(data, dict) else data, f"tree file {path}")
    if spec.startswith("["):
        try:
            return _tree_from(json.loads(spec), f"tree spec {text!r}")
        except json.JSONDecodeError:
            raise RidgelineError(f"tree spec {text!r} is not valid JSON; expected a list of paths like "
                                 "[[0],[0,0],[1]]") from None
    paths = []
    for part in spec.split(";"):
        try:
            paths.append([int(r) for r in part.split(",")])
        except ValueError:
            raise RidgelineError(f"tree spec {text!r}: path {part.strip()!r} is not comma-separated ranks") from None
    return _tree_from(paths, f"tree spec {text!r}")


def _tree_from(data: object, what: str) -> Tree:
    if not isinstance(data, list) or not all(isinstance(p, list) and all(isinstance(r, int) for r in p) for p in data):
        raise RidgelineError(f"{what}: expected a list of paths, each a list of integer ranks")
    try:
        return Tree(tuple(tuple(p) for p in data))
    except RidgelineError as exc:
        raise RidgelineError(f"{what}: {str(exc).removeprefix('tree: ')}") from None


def _check_accuracy(accuracy: Sequence[Sequence[float]]) -> list[list[float]]:
    rows = [[float(x) for x in row] for row in accuracy]
    if not rows or not all(rows) or any(not 0.0 <= x <= 1.0 or math.isnan(x) for row in rows for x in row):
        raise RidgelineError("rank accuracies must be a non-empty [drafter][rank] table of probabilities in [0, 1]")
    return rows


def node_chance(path: Sequence[int], accuracy: Sequence[Sequence[float]]) -> float:
    """Probability that the node at `path` is accepted: the product of a[j][r_j] along it (independence)."""
    chance = 1.0
    for depth, rank in enumerate(path):
        row = accuracy[depth] if depth < len(accuracy) else ()
        chance *= row[rank] if rank < len(row) else 0.0
    return chance


def expected_tokens(tree: Tree, accuracy: Sequence[Sequence[float]]) -> float:
    """Expected tokens per verify step: 1 (the base's own token) + the chances of every node."""
    return 1.0 + sum(node_chance(p, accuracy) for p in tree.paths)


def grow_tree(accuracy: Sequence[Sequence[float]], nodes: int) -> Tree:
    """The sparse tree of `nodes` non-root nodes with the highest expected tokens, grown greedily (Medusa)."""
    acc = _check_accuracy(accuracy)
    if nodes < 0 or nodes > MAX_NODES:
        raise RidgelineError(f"tree nodes must be between 0 and {MAX_NODES}, got {nodes}")
    chosen: list[tuple[int, ...]] = []
    frontier = [(-node_chance((0,), acc), (0,))]
    while frontier and len(chosen) < nodes:
        neg, path = heapq.heappop(frontier)
        chosen.append(path)
        nxt = [path[:-1] + (path[-1] + 1,)]  # the next sibling
        if len(path) < len(acc):
            nxt.append(path + (0,))  # the first child
        for p in nxt:
            if p[-1] < len(acc[len(p) - 1]):
                heapq.heappush(frontier, (-node_chance(p, acc), p))
    return Tree(tuple(chosen))


@dataclass(frozen=True)
class TreeChoice:
    """The tree chosen for a measured cost curve, with every size considered."""

    tree: Tree
    table: tuple[dict, ...]  # per size: nodes, verify_tokens, expected_tokens, relative_cost, expected_speedup

    def to_json(self) -> dict:
        """JSON form."""
        best = next(r for r in self.table if r["nodes"] == len(self.tree.paths))
        return {"tree": self.tree.to_json(), "nodes": len(self.tree.paths), "expected_tokens": best["expected_tokens"],
                "expected_speedup": best["expected_speedup"], "sizes": list(self.table)}


def choose_tree(accuracy: Sequence[Sequence[float]], relative_cost: Mapping[int, float],
                draft_cost: float = 0.0) -> TreeChoice:
    """The tree size with the best expected tokens / relative step cost.

    `relative_cost[m]` is the measured time of verifying m tokens (root included) over one plain decode step,
    for every m considered (m = 1 is the root alone); `draft_cost` is the drafter's time per step on the same
    scale. Sizes beyond the measured ones are never chosen.
    """
    acc = _check_accuracy(accuracy)
    sizes = sorted(int(m) for m in relative_cost)
    if not sizes or sizes[0] < 1 or any(not (relative_cost[m] > 0) for m in sizes):
        raise RidgelineError("the verify-cost curve needs positive costs for token counts >= 1")
    rows, best = [], None
    for m in sizes:
        tree = grow_tree(acc, m - 1)
        if len(tree.paths) != m - 1:  # the accuracies allow no bigger tree
            break
        expected = expected_tokens(tree, acc)
        cost = relative_cost[m] + (draft_cost if m > 1 else 0.0)
        row = {"nodes": m - 1, "verify_tokens": m, "expected_tokens": expected, "relative_cost": cost,
               "expected_speedup": expected / cost}
        rows.append(row)
        if best is None or row["expected_speedup"] > best[1]["expected_speedup"]:
            best = (tree, row)
    return TreeChoice(best[0], tuple(rows))
