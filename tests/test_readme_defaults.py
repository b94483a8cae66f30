"""Defaults and sizes README.md states as figures, each next to the sentence it comes from, so
that changing one without the README fails here (tests/README_CLAIMS.md lists the rest)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from alignloop.control.pbrl import PbrlConfig
from alignloop.control.ppo import PPOSettings
from alignloop.feedback.schema import HARM_CATEGORIES
from alignloop.lm.demo import DemoConfig
from alignloop.loop.demo import DEMOS, demo_config
from alignloop.loop.rounds import LoopConfig
from alignloop.platform.schemas import ItemIn, ProjectIn
from alignloop.platform.settings import Settings

TWO = [{"text": "a"}, {"text": "b"}]


def test_platform_defaults() -> None:
    s = Settings()
    assert s.token_cache_s == 5.0  # "ALIGNLOOP_TOKEN_CACHE_S seconds, 5 by default"
    assert (s.max_body_bytes, s.max_upload_bytes) == (1 << 20, 50 << 20)  # "over 1 MiB (uploads: 50 MiB)"
    assert s.async_pool_open == 8  # "open their first 8 database connections at start-up"
    # "up to 40 PostgreSQL connections (ALIGNLOOP_DB_POOL_SIZE 10, twice that in bursts, plus ... 20)"
    assert (s.db_pool_size, s.async_pool_size) == (10, 20) and 2 * s.db_pool_size + s.async_pool_size == 40
    assert s.db == "sqlite:///alignloop.db"  # "# sqlite:///alignloop.db"
    # "The default is today's PKU-SafeRLHF questions (better; safer, is_safe with the 19 ..."
    asked = {q.name: q for q in ProjectIn(name="p").questions}
    assert list(asked)[:3] == ["better", "safer", "is_safe"]
    assert asked["is_safe"].harm_categories == HARM_CATEGORIES and len(HARM_CATEGORIES) == 19
    # "An item may carry a `key` (up to 128 characters ...)"
    assert ItemIn(key="k" * 128, prompt="p", candidates=TWO).key == "k" * 128
    with pytest.raises(ValidationError, match="at most 128 characters"):
        ItemIn(key="k" * 129, prompt="p", candidates=TWO)


def test_demo_defaults() -> None:
    # "its expected cost for answers unsafe 2% of the time, --unsafe-share"
    assert DemoConfig().unsafe_share == 0.02 and DemoConfig().cost_limit is None
    # "the toy-world demo (1,000 pairs a round from 3 scripted annotators)", "three rounds"
    toy = demo_config(LoopConfig(demo="toyworld"))
    assert (toy.pairs, toy.rounds, DEMOS["toyworld"]["annotators"]) == (1000, 3, 3)
    assert toy.run_dir == Path("runs/loop-toyworld")
    # "costs floored at -1 ..., with λ's step 1.0 and ceiling 20"
    from alignloop.loop.toyworld import PRESETS as TOY_PRESETS

    demo = TOY_PRESETS["demo"]
    assert (demo["cost_floor"], demo["lambda_lr"], demo["lambda_max"]) == (-1.0, 1.0, 20.0)
    # "The cheetah demo renders 20 clips a round and asks 120 pairs about them, for 5 rounds"
    cheetah = demo_config(LoopConfig(demo="cheetah"))
    assert (cheetah.pairs, cheetah.rounds, cheetah.domain, cheetah.env) == (
        120,
        5,
        "control",
        "SafeHalfCheetahVelocity-v5",
    )
    from alignloop.loop.control import PRESETS, ControlDomain

    preset = PRESETS[cheetah.preset or "cheetah"]
    # "one sampled and one deterministic episode", the 20 clips, "limit 25"
    assert (preset["max_clips"], preset["pool_episodes"], preset["ppo"].cost_limit) == (20, 1, 25.0)
    import inspect

    defaults = inspect.signature(ControlDomain).parameters
    assert defaults["cost_ensemble"].default == 3  # "The cost model is an ensemble of 3"
    # "--seed 1 --run-dir runs/loop-cheetah-seed1 for the second row"
    other = demo_config(LoopConfig(demo="cheetah", seed=1, run_dir=Path("runs/loop-cheetah-seed1")))
    assert (other.seed, other.run_dir) == (1, Path("runs/loop-cheetah-seed1"))


def test_control_defaults() -> None:
    # "lambda moved by the mean cost of the last 100 episodes"
    assert PPOSettings().cost_window == 100
    # "`cost-window`: 50 for `ppo-lag`, `cpo`, `pcpo`, `focops` and `cup`, OmniSafe's window;
    # 100 for `ppo`, 10 for `sac-lag`"; "CPO's is OmniSafe's per-episode `J_c - d` unless
    # `--cpo.violation-per-step`"; PCPO's is per step
    from alignloop.control.train import TrainConfig

    t = TrainConfig()
    windows = {
        g: getattr(t, g).cost_window for g in ("ppo_lag", "cpo", "pcpo", "focops", "cup", "ppo", "sac_lag")
    }
    assert windows == {
        "ppo_lag": 50,
        "cpo": 50,
        "pcpo": 50,
        "focops": 50,
        "cup": 50,
        "ppo": 100,
        "sac_lag": 10,
    }
    assert (t.cpo.violation_per_step, t.pcpo.violation_per_step) == (False, True)
    p = PbrlConfig()
    # "segments of 50 steps", "a Bradley-Terry reward ensemble of 3", "an ensemble of 3
    # (--cost-ensemble)", "half of each round's pairs (--cost-queries)"
    assert (p.segment_length, p.ensemble, p.cost_ensemble, p.cost_queries) == (50, 3, 3, 0.5)
