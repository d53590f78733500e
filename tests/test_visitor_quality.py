"""A face too small, too blurred or turned too far gets no new visitor FaceId (it would not
match when the person comes back: counted twice), but is still matched when known."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageFilter

from gateway.recognition import uncountable
from storeface import wire
from storeface.stores import StoreConfig
from tests.conftest import photo
from tests.inprocess import InProcess, apps_fixture, recognize

pytestmark = pytest.mark.slow

# store-b is strict about blur, so a photo sharp enough to match is still under its gate;
# store-c about yaw, as lfw has few faces turned past the default gate
NODES = {"n1": ["store-a", "store-b", "store-c"]}
STRICT_BLUR = 60.0
STRICT_YAW = 25.0


apps = apps_fixture(
    "quality",
    NODES,
    store_options={
        "store-b": {"min_face_blur": STRICT_BLUR},
        "store-c": {"max_face_yaw": STRICT_YAW},
    },
)


def _blurred(data: bytes, radius: float) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).filter(ImageFilter.GaussianBlur(radius)).save(buf, "JPEG")
    return buf.getvalue()


async def _recognize(c: httpx.AsyncClient, store: str, image: bytes) -> dict:
    r = await recognize(c, store, image)
    assert r.status_code == 200, r.text
    return r.json()["faces"][0]


def test_the_gates_in_order() -> None:
    store = StoreConfig(id="s", min_face_size=40, min_face_blur=10, max_face_yaw=45)
    ok = wire.Quality(size=80, blur=50, score=0.9, yaw=10)
    assert uncountable(store, ok) is None
    assert uncountable(store, ok.model_copy(update={"size": 30})) == "too_small"
    assert uncountable(store, ok.model_copy(update={"blur": 5})) == "too_blurred"
    assert uncountable(store, ok.model_copy(update={"yaw": -60})) == "turned_away"
    assert uncountable(store, ok.model_copy(update={"yaw": None})) is None
    off = store.model_copy(update={"auto_register": False})
    assert uncountable(off, ok) == "not_registering"


@pytest.mark.anyio
async def test_a_blurred_stranger_is_not_counted_and_says_why(apps: InProcess, faces: Path) -> None:
    face = await _recognize(apps.gateway, "store-a", _blurred(photo(faces, "Juanes", 2), 4))
    assert face["quality"]["blur"] < StoreConfig(id="x").min_face_blur
    assert (face["face_id"], face["visit"], face["reason"]) == (None, "not_counted", "too_blurred")
    # the sharp photo of the same stranger is a new visitor as before
    sharp = await _recognize(apps.gateway, "store-a", photo(faces, "Juanes", 2))
    assert sharp["face_id"] is not None and sharp["visit"] == "new" and sharp["reason"] == ""


@pytest.mark.anyio
async def test_a_known_face_under_the_gate_is_still_matched(apps: InProcess, faces: Path) -> None:
    person = "Eddy_Merckx"
    r = await apps.gateway.post(
        "/v1/stores/store-b/faces",
        files={"image": ("a.jpg", photo(faces, person, 1))},
        data={"label": person},
    )
    assert r.status_code == 201, r.text
    soft = _blurred(photo(faces, person, 1), 1.5)
    face = await _recognize(apps.gateway, "store-b", soft)
    assert face["quality"]["blur"] < STRICT_BLUR  # under this store's gate ...
    assert face["face_id"] == r.json()["face_id"] and face["label"] == person  # ... yet matched
    assert face["visit"] in ("new", "returning") and face["reason"] == ""
    stranger = await _recognize(
        apps.gateway, "store-b", _blurred(photo(faces, "Emile_Lahoud", 2), 1.5)
    )
    assert (stranger["face_id"], stranger["reason"]) == (None, "too_blurred")


@pytest.mark.anyio
async def test_a_face_turned_far_away_is_not_counted(apps: InProcess, faces: Path) -> None:
    turned = photo(faces, "Maria_Soledad_Alvear_Valenzuela", 1)  # turned ~35-60° (by embedder)
    face = await _recognize(apps.gateway, "store-c", turned)
    assert face["quality"]["yaw"] is not None and abs(face["quality"]["yaw"]) > STRICT_YAW
    assert (face["face_id"], face["visit"], face["reason"]) == (None, "not_counted", "turned_away")
    frontal = await _recognize(apps.gateway, "store-c", photo(faces, "Mary_Carey", 1))
    assert abs(frontal["quality"]["yaw"]) < 15 and frontal["face_id"] is not None
