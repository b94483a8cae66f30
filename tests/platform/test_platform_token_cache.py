"""The per-process API-token cache: hits skip the database, revocation is immediate here and
bounded by the TTL when it happens elsewhere."""

from __future__ import annotations

import random

import pytest
from fastapi import FastAPI
from platform_helpers import World
from sqlalchemy import delete, event

from alignloop.platform import auth
from alignloop.platform.models import ApiToken


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cache_expires_forgets_and_can_be_off() -> None:
    clock = FakeClock()
    cache: auth.TokenCache[str] = auth.TokenCache(5.0, spread=0.0, clock=clock)
    cache.put("d1", "alice")
    clock.now = 104.9
    assert cache.get("d1") == "alice"
    clock.now = 105.0  # exactly the TTL later: expired
    assert cache.get("d1") is None
    cache.put("d2", "bob")
    cache.forget("d2")
    assert cache.get("d2") is None
    off: auth.TokenCache[str] = auth.TokenCache(0.0, clock=clock)
    off.put("d3", "carol")
    assert off.get("d3") is None
    small: auth.TokenCache[int] = auth.TokenCache(5.0, spread=0.0, max_entries=2, clock=clock)
    for i in range(3):  # the third entry finds the cache full and starts it afresh
        small.put(f"k{i}", i)
    assert [small.get(f"k{i}") for i in range(3)] == [None, None, 2]


def test_entries_put_together_expire_spread_over_the_last_half_of_the_ttl() -> None:
    clock = FakeClock()
    cache: auth.TokenCache[int] = auth.TokenCache(4.0, clock=clock, rng=random.Random(0))
    for i in range(200):  # everyone's first request after a restart
        cache.put(f"d{i}", i)
    alive = []
    for t in (1.9, 2.0, 2.5, 3.0, 3.5, 4.0):
        clock.now = 100.0 + t
        alive.append(sum(cache.get(f"d{i}") is not None for i in range(200)))
    assert alive[0] == 200 and alive[-1] == 0  # none before half the TTL, none past the TTL
    expired_per_half_second = [a - b for a, b in zip(alive[1:], alive[2:], strict=False)]
    assert all(30 <= n <= 70 for n in expired_per_half_second)  # about 50 each: spread, not together
    with pytest.raises(ValueError, match="spread"):
        auth.TokenCache(4.0, spread=1.5)


def _count_statements(app: FastAPI) -> list[str]:
    seen: list[str] = []

    @event.listens_for(app.state.engine, "before_cursor_execute")
    def _record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        seen.append(statement)

    return seen


def test_a_cached_token_skips_the_lookup(app: FastAPI, world: World) -> None:
    assert world.client.get("/api/me", headers=world.auth("ann1")).status_code == 200
    seen = _count_statements(app)
    again = world.client.get("/api/me", headers=world.auth("ann1"))
    assert again.status_code == 200 and again.json()["name"] == "ann1"
    assert not [s for s in seen if "api_tokens" in s]


def test_revoking_through_the_api_is_immediate(world: World) -> None:
    assert world.client.get("/api/me", headers=world.auth("ann1")).status_code == 200  # now cached
    assert world.client.delete("/api/tokens/current", headers=world.auth("ann1")).status_code == 204
    after = world.client.get("/api/me", headers=world.auth("ann1"))
    assert after.status_code == 401 and after.json()["detail"] == "invalid, expired or revoked API token"


def test_revoking_elsewhere_takes_effect_within_the_ttl(app: FastAPI, world: World) -> None:
    clock = FakeClock()
    app.state.token_cache = auth.TokenCache(5.0, spread=0.0, clock=clock)
    assert world.client.get("/api/me", headers=world.auth("ann2")).status_code == 200
    with app.state.sessionmaker() as session:  # as another worker process would
        session.execute(delete(ApiToken).where(ApiToken.digest == auth.token_digest(world.tokens["ann2"])))
        session.commit()
    clock.now += 4.0
    assert world.client.get("/api/me", headers=world.auth("ann2")).status_code == 200
    clock.now += 1.0
    assert world.client.get("/api/me", headers=world.auth("ann2")).status_code == 401
    assert world.client.get("/api/me", headers=world.auth("ann1")).status_code == 200


def test_forged_tokens_are_never_cached(app: FastAPI, world: World) -> None:
    for _ in range(2):
        r = world.client.get("/api/me", headers={"Authorization": "Bearer al_forged"})
        assert r.status_code == 401
    assert app.state.token_cache.get(auth.token_digest("al_forged")) is None
