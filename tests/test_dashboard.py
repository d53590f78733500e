"""The dashboard in a real browser (Debian's headless chromium, driven by Playwright) against a
real gateway and shard node over HTTP, with a scripted sequence of visits in real Redis: the
page loads without console errors, signs in, shows what /v1 answers, keeps a camera key to its
stores, and erases from the page. Also `storeface retention sweep` against the same gateway."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
import redis as redis_lib
import yaml
from redis.asyncio import Redis
from typer.testing import CliRunner

from gateway.analytics import Analytics
from storeface.facedb import FaceDB
from tests.support import ROOT, GatewayNode, RedisServer, ShardNode, free_port
from tools.browser import chromium
from tools.browser import missing as browser_missing
from tools.cli import app as cli

pytestmark = pytest.mark.slow  # starts server processes and a browser

SCREENSHOTS = ROOT / ".cache" / "screenshots"
ADMIN = "dashboard-admin-key"
CAMERA = "dashboard-camera-key"
COLUMNS = ("pv", "uv", "new", "returning", "member_visits")

# (store, visitor, member?, days ago of each visit): the scripted sequence of visits
SCRIPT: list[tuple[str, str, bool, list[int]]] = [
    ("store-a", "v1", False, [0, 1, 3, 6]),
    ("store-a", "v2", False, [0, 2]),
    ("store-a", "v3", False, [1]),
    ("store-a", "v4", True, [0, 4]),
    ("store-a", "v5", False, [5, 6]),
    ("store-a", "v6", False, [0]),
    ("store-b", "w1", False, [0, 1]),
    ("store-b", "w2", False, [2]),
    ("store-c", "x1", False, [40]),
    ("store-c", "x2", False, [0]),
]


@dataclass
class Site:
    url: str
    redis: redis_lib.Redis
    faces: dict[str, int] = field(default_factory=dict)  # visitor name → FaceId

    def api(self, method: str, path: str, key: str = ADMIN, **kw: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.url}{path}", headers={"X-API-Key": key}, timeout=30, **kw
        )


def _day(days_ago: int) -> dt.date:
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days_ago)


async def _seed(redis_url: str) -> dict[str, int]:
    """The script's visitors as real faces (a vector each), their visits counted as the
    gateway counts them, at the scripted times."""
    redis = Redis.from_url(redis_url)
    db, analytics = FaceDB(redis), Analytics(redis, window_s=300)
    rng = np.random.default_rng(7)
    faces: dict[str, int] = {}
    for i, (store, name, member, days) in enumerate(SCRIPT):
        fid = await db.new_face_id()
        emb = rng.normal(size=128).astype(np.float32)
        await db.add_vector(store, fid, emb / np.linalg.norm(emb), embedder="dlib", kind="visitor")
        if member:
            await db.bind_member(fid, f"member-{name}", {"name": name})
        faces[name] = fid
        for ago in sorted(days, reverse=True):
            start = dt.datetime.combine(_day(ago), dt.time(6), dt.UTC).timestamp()
            await analytics.record(store, fid, member, now=start + 60 * i)
            await redis.delete(f"seen:{store}:{fid}")  # the next visit is another day
    await redis.aclose()
    return faces


def expected_days(store: str, first: dt.date, last: dt.date) -> dict[str, dict[str, int]]:
    """What the script means for a store's days with visits, worked out here, not by the
    gateway: a visitor is new on the first day they came, returning after."""
    visits = [(ago, name, member) for s, name, member, days in SCRIPT if s == store for ago in days]
    seen: set[str] = set()
    out = {}
    for ago in sorted({a for a, _, _ in visits}, reverse=True):
        that_day = [(n, m) for a, n, m in visits if a == ago]
        names = {n for n, _ in that_day}
        new = names - seen
        seen |= names
        if first <= _day(ago) <= last:
            out[f"{_day(ago)}"] = {
                "pv": len(that_day),
                "uv": len(names),
                "new": len(new),
                "returning": len(names) - len(new),
                "member_visits": sum(m for _, m in that_day),
            }
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("dashboard")
    client = redis_lib.Redis(port=redis_server.port)
    client.flushall()
    port = free_port()
    stores = work / "stores.yaml"
    doc = {
        "nodes": [
            {"id": "n1", "replicas": 1, "urls": [f"http://127.0.0.1:{port}"], "embedder": "dlib"}
        ],
        "stores": [
            {"id": "store-a", "node": "n1", "region": "north"},
            {"id": "store-b", "node": "n1", "region": "north", "visitor_retention_days": 7},
            {"id": "store-c", "node": "n1", "region": "south"},
        ],
    }
    stores.write_text(yaml.safe_dump(doc, sort_keys=False))
    with ThreadPoolExecutor(1) as pool:  # playwright's loop may be running in this thread
        faces = pool.submit(asyncio.run, _seed(redis_server.url)).result()
    shard = ShardNode("n1", stores, redis_server.url, work, port=port)
    gateway = GatewayNode(
        stores,
        redis_server.url,
        work,
        admin_key=ADMIN,
        camera_keys=f"{CAMERA}=store-a",
        retention_interval_s="0",
    )
    shard.start()
    try:
        gateway.start()
        yield Site(gateway.url, client, faces)
    finally:
        gateway.stop()
        shard.stop()
        client.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if why := browser_missing():
        pytest.skip(
            f"BROWSER TESTS SKIPPED: {why}; "
            "`make test` installs Debian's chromium where it runs as root"
        )
    with chromium() as b:
        yield b


class Page:
    """A fresh tab that remembers every console error and uncaught exception."""

    def __init__(self, browser: Any, site: Site) -> None:
        self.site = site
        self.tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.errors: list[str] = []
        self.tab.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.tab.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def open(self, fragment: str = "") -> None:
        self.tab.goto(f"{self.site.url}/dashboard{fragment}")
        if "key=" in fragment:
            self.loaded()

    # Waits go through selectors: the page's CSP refuses the eval that wait_for_function needs.
    def loaded(self) -> None:
        self.tab.wait_for_selector("html[data-loaded='yes']", state="attached")

    def shown(self, store: str, first: dt.date, last: dt.date) -> None:
        self.tab.wait_for_selector(f"html[data-shown='{store} {first} {last}']", state="attached")

    def status(self, text: str) -> str:
        self.tab.locator("#status", has_text=text).wait_for()
        return str(self.tab.inner_text("#status"))

    def column(self, selector: str, attr: str) -> list[str]:
        return list(
            self.tab.eval_on_selector_all(selector, f"rows => rows.map(r => r.dataset.{attr})")
        )

    def days_table(self) -> dict[str, dict[str, int]]:
        rows = self.tab.eval_on_selector_all(
            "#days-table tbody tr",
            """rows => rows.map(r => [r.dataset.day, Object.fromEntries(
                 [...r.querySelectorAll('td[data-col]')].map(
                   td => [td.dataset.col, Number(td.textContent.replace(/,/g, ''))]))])""",
        )
        return dict(rows)


@pytest.fixture
def page(browser: Any, site: Site) -> Iterator[Page]:
    p = Page(browser, site)
    yield p
    p.tab.close()


def test_the_page_loads_signs_in_and_draws_without_console_errors(page: Page) -> None:
    page.open()
    page.tab.wait_for_selector("#sign-in:not([hidden])")
    page.tab.fill("#key-input", ADMIN)
    page.tab.click("#sign-in-form button[type=submit]")
    page.loaded()
    assert "admin (admin, 3 stores)" in page.tab.inner_text("#who")
    assert page.tab.evaluate("Chart.getChart('chart-traffic').data.labels.length") == 30
    assert page.tab.evaluate("Chart.getChart('chart-mix').data.datasets.length") == 3
    assert page.tab.evaluate("performance.getEntriesByName('storeface:first-chart').length") == 1
    # the key lives in this tab's session storage only
    assert page.tab.evaluate("sessionStorage.getItem('storeface.key')") == ADMIN
    assert page.tab.evaluate("document.cookie") == ""
    assert page.errors == []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.tab.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)
    print(f"screenshot: {SCREENSHOTS / 'dashboard.png'}")


def test_a_key_in_the_fragment_leaves_the_address_bar_at_once(page: Page) -> None:
    page.open(f"#key={ADMIN}&store=store-b")
    assert page.tab.url == f"{page.site.url}/dashboard#store=store-b"
    assert page.tab.input_value("#store-select") == "store-b"
    page.tab.click("#sign-out")
    assert page.tab.evaluate("sessionStorage.getItem('storeface.key')") is None
    assert page.tab.is_visible("#sign-in") and not page.tab.is_visible("#app")
    assert page.errors == []
    page.tab.go_back()  # the entry the key came in was replaced, not kept behind
    assert page.tab.url == "about:blank"


def test_the_page_shows_what_the_stats_api_answers(page: Page) -> None:
    site = page.site
    page.open(f"#key={ADMIN}")
    last, first = _day(0), _day(29)
    for store in ("store-a", "store-b"):
        page.tab.select_option("#store-select", store)
        page.shown(store, first, last)
        shown = page.days_table()
        api = site.api("GET", f"/v1/stores/{store}/stats", params={"from": first, "to": last})
        assert shown == {d["day"]: {k: d[k] for k in COLUMNS} for d in api.json()["days"]}
        assert {d: v for d, v in shown.items() if v["pv"]} == expected_days(store, first, last)
    # another range
    page.tab.fill("#from", f"{_day(3)}")
    page.tab.fill("#to", f"{_day(1)}")
    page.tab.click("#range-form button[type=submit]")
    page.shown("store-b", _day(3), _day(1))
    assert list(page.days_table()) == [f"{_day(d)}" for d in (3, 2, 1)]
    assert {d: v for d, v in page.days_table().items() if v["pv"]} == expected_days(
        "store-b", _day(3), _day(1)
    )
    # the chain overview: every store's numbers, as the API sums them
    overview = {s["store_id"]: s for s in site.api("GET", "/v1/stats/overview").json()["stores"]}
    rows = page.tab.eval_on_selector_all(
        "#overview-table tbody tr",
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))",
    )
    assert [r[0] for r in rows] == ["store-a", "store-b", "store-c"]
    for r in rows:
        o = overview[r[0]]
        want = [o["today"]["pv"], o["today"]["uv"], o["last_7_days"]["pv"], o["last_7_days"]["uv"]]
        want += [o["last_30_days"][k] for k in ("pv", "uv", "new", "member_visits")]
        assert [int(c.replace(",", "")) for c in r[2:]] == want
    a7 = overview["store-a"]["last_7_days"]
    assert (a7["pv"], a7["uv"], a7["member_visits"]) == (12, 6, 2)  # the script's week
    assert page.errors == []


def test_a_camera_key_sees_only_its_stores(page: Page) -> None:
    page.open(f"#key={CAMERA}&store=store-b")  # asks for another store: gets its own
    assert page.tab.input_value("#store-select") == "store-a"
    options = page.tab.eval_on_selector_all("#store-select option", "os => os.map(o => o.value)")
    assert options == ["store-a"]
    assert page.column("#overview-table tbody tr", "store") == ["store-a"]
    assert "(camera, 1 store)" in page.tab.inner_text("#who")
    assert not page.tab.is_visible("#admin")
    assert page.errors == []
    status = page.tab.evaluate(
        """fetch('/v1/stores/store-b/stats',
                 {headers: {'X-API-Key': sessionStorage.getItem('storeface.key')}})
           .then(r => r.status)"""
    )
    assert status == 403


def test_erase_from_the_page_asks_first_and_is_audited(page: Page) -> None:
    site = page.site
    fid = site.faces["v6"]
    page.open(f"#key={ADMIN}&store=store-a")
    assert str(fid) in page.column("#visits-table tbody tr", "face")
    page.tab.click(f"#visits-table tr[data-face='{fid}'] button")
    assert page.tab.is_visible("#confirm-erase")
    assert page.tab.inner_text("#confirm-face") == str(fid)
    page.tab.click("#confirm-no")
    assert site.redis.exists(f"face:{fid}"), "cancel erases nothing"
    page.tab.fill("#erase-face", str(fid))
    page.tab.fill("#erase-reason", "ticket 7")
    page.tab.click("#erase")
    page.tab.click("#confirm-yes")
    page.status("erased")
    assert not site.redis.exists(f"face:{fid}")
    assert site.api("DELETE", f"/v1/faces/{fid}").json()["error"]["code"] == "face_not_found"
    page.tab.wait_for_selector(f"#audit-table tbody tr[data-face='{fid}']")
    first = page.tab.eval_on_selector(
        "#audit-table tbody tr", "r => [...r.cells].map(c => c.textContent)"
    )
    assert first[1:] == ["admin", str(fid), "ticket 7", "store-a"]
    assert str(fid) not in page.column("#visits-table tbody tr", "face")
    assert page.errors == []


def test_admin_binds_a_member_and_runs_a_dry_sweep(page: Page) -> None:
    site = page.site
    fid = site.faces["v5"]
    page.open(f"#key={ADMIN}")
    page.tab.fill("#member-face", str(fid))
    page.tab.fill("#member-id", "m-77")
    page.tab.click("#bind")
    page.status("m-77")
    assert site.redis.hget(f"face:{fid}", "member_id") == b"m-77"
    page.tab.click("#unbind")
    page.status("no longer")
    assert site.redis.hget(f"face:{fid}", "kind") == b"visitor"
    page.tab.check("#sweep-dry")
    page.tab.click("#sweep")
    assert "1 visitors would be erased" in page.status("Dry run")  # x1, unseen 40 days
    assert site.redis.exists(f"face:{site.faces['x1']}")
    assert page.errors == []


def test_the_cli_runs_the_retention_sweep(site: Site) -> None:
    runner = CliRunner()
    args = ["retention", "sweep", "--url", site.url]
    dry = runner.invoke(cli, [*args, "--dry-run", "--api-key", ADMIN])
    assert dry.exit_code == 0 and "dry run: 1 of" in dry.output, dry.output
    refused = runner.invoke(cli, [*args, "--api-key", CAMERA])
    assert refused.exit_code == 1 and "403 forbidden" in refused.output
    assert runner.invoke(cli, [*args, "--older-than-days", "0", "--api-key", ADMIN]).exit_code == 2
    done = runner.invoke(cli, [*args, "--api-key", ADMIN])
    assert done.exit_code == 0 and "erased 1 FaceIds" in done.output, done.output
    assert not site.redis.exists(f"face:{site.faces['x1']}")
    trail = site.api("GET", "/v1/audit", params={"limit": 1}).json()["entries"][0]
    assert (trail["face_id"], trail["reason"], trail["actor"]) == (
        site.faces["x1"],
        "retention",
        "admin",
    )
