"""Past capacity a node refuses at once with 503 `overloaded` and records nothing for it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import photo
from tests.inprocess import InProcess, apps_fixture, recognize

# one worker, one photo in the pipeline at a time: a second concurrent one is refused
apps = apps_fixture("overload", {"n1": ["store-a"]}, shard_options={"max_queue": 1})


@pytest.mark.anyio
async def test_a_burst_past_capacity_is_refused_fast_and_not_counted(
    apps: InProcess, faces: Path
) -> None:
    people = ["Juanes", "Rebekah_Chantay_Revels", "Tom_Jones", "Eddy_Merckx", "Jon_Voight"]
    burst = await asyncio.gather(
        *(recognize(apps.gateway, "store-a", photo(faces, p, 1)) for p in people)
    )
    served = [r for r in burst if r.status_code == 200]
    refused = [r for r in burst if r.status_code != 200]
    assert served, [r.text for r in burst]
    assert refused, "five photos at once past a queue of one: some must be refused"
    for r in refused:
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "overloaded"
        assert r.headers["Retry-After"] == "1"
    stats = (await apps.gateway.get("/v1/stores/store-a/stats")).json()
    pv = sum(day["pv"] for day in stats["days"])
    assert pv == len(served), "a refused photo must leave no visit behind"
    # once the burst is over, a refused camera's retry is served
    retry = await recognize(apps.gateway, "store-a", photo(faces, people[-1], 1))
    assert retry.status_code == 200, retry.text
