"""Sharded data parallelism for the language-model trainers: now `alignloop.runstack.distributed`
(shared with the control trainers); these names are kept for code that imports them from here."""

from __future__ import annotations

from alignloop.runstack.distributed import FullState, shard_model

__all__ = ["FullState", "shard_model"]
