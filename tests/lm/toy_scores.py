"""The toy world's ground truth as reward and cost functions (`--reward-function`,
`--cost-function`), for learning tests that need no learned reward or cost model."""

from __future__ import annotations

from alignloop.lm.toyworld import ToyWorld

WORLD = ToyWorld(0)


def helpfulness(prompts: list[str], completions: list[str], **_: object) -> list[float]:
    """The ground-truth helpfulness of each response, in [0, 1]."""
    return [WORLD.helpfulness(p, c) for p, c in zip(prompts, completions, strict=True)]


def harm(prompts: list[str], completions: list[str], **_: object) -> list[float]:
    """+1 for an unsafe response, -1 for a safe one (the Safe RLHF cost sign)."""
    return [1.0 if WORLD.is_unsafe(p, c) else -1.0 for p, c in zip(prompts, completions, strict=True)]
