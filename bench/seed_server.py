"""The seed design, for bench.load to compare against: one process, one faiss index.

    python -m bench.seed_server --port 8199

What the project started from: a single Python process (stdlib `http.server`, a thread
per connection, so every request shares one GIL) that runs `face_recognition`
(face_locations + face_encodings, HOG, upsample 1) on each upload inline and searches a
`faiss.IndexIDMap(faiss.IndexFlatL2(128))` with k=1. No process pool, no Redis, no
gateway, no nginx, no registration of unknown faces. face_recognition runs under one lock:
its dlib models are module globals that are not safe to call from two threads at once (two
concurrent enrollments segfaulted this server here), and the GIL already lets only one of
them compute at a time, so the lock costs the seed no throughput.

    POST /enroll      multipart `image` (+ `label`): the largest face joins the index
    POST /recognize   multipart `image`: each face's nearest id, distance and label
    GET  /healthz
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import signal
import sys
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import face_recognition
import faiss
import numpy as np

MAX_BODY = 10 * 1024 * 1024
_DLIB = threading.Lock()  # one face_recognition call at a time (see the module doc)


class SeedIndex:
    """The seed's whole state: a flat L2 index and the labels of its ids."""

    def __init__(self) -> None:
        self.index = faiss.IndexIDMap(faiss.IndexFlatL2(128))
        self.labels: dict[int, str] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, embedding: np.ndarray, label: str) -> int:
        with self._lock:
            face_id = next(self._ids)
            self.index.add_with_ids(
                embedding.reshape(1, 128).astype(np.float32), np.array([face_id], np.int64)
            )
            self.labels[face_id] = label
            return face_id

    def search(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if self.index.ntotal == 0:
                n = len(embeddings)
                return np.full((n, 1), np.inf, np.float32), np.full((n, 1), -1, np.int64)
            distances, ids = self.index.search(embeddings.astype(np.float32), 1)
            return distances, ids


def faces_of(data: bytes) -> tuple[list[tuple[int, int, int, int]], list[np.ndarray], dict]:
    """face_recognition as the seed used it: HOG locations, then 128-d encodings."""
    t0 = time.perf_counter()
    image = face_recognition.load_image_file(io.BytesIO(data))
    t1 = time.perf_counter()
    with _DLIB:
        tw = time.perf_counter()
        locations = face_recognition.face_locations(image)
        t2 = time.perf_counter()
        encodings = face_recognition.face_encodings(image, known_face_locations=locations)
    t3 = time.perf_counter()
    timings = {
        "decode_ms": (t1 - t0) * 1000,
        "wait_ms": (tw - t1) * 1000,
        "detect_ms": (t2 - tw) * 1000,
        "embed_ms": (t3 - t2) * 1000,
    }
    return locations, encodings, timings


def parse_form(content_type: str, body: bytes) -> dict[str, bytes]:
    """multipart/form-data fields by name, with the stdlib's MIME parser."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields: dict[str, bytes] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload
    return fields


class Handler(BaseHTTPRequestHandler):
    server: SeedServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the load generator's clients expect

    def log_message(self, format: str, *args: Any) -> None:
        pass  # an access log line per request would cost the seed time it never spent

    def _reply(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, {"status": "ok", "faces": int(self.server.store.index.ntotal)})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        try:
            self._post()
        except Exception as exc:  # an answer, never a dropped connection
            self._reply(500, {"error": f"{type(exc).__name__}: {exc}"})

    def _post(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY:
            self._reply(413 if length else 411, {"error": "bad body length"})
            return
        body = self.rfile.read(length)
        t0 = time.perf_counter()
        fields = parse_form(self.headers.get("Content-Type", ""), body)
        image = fields.get("image")
        if image is None:
            self._reply(400, {"error": "multipart field `image` is required"})
            return
        try:
            locations, encodings, timings = faces_of(image)
        except Exception as exc:  # the seed answered a broken upload with its error text
            self._reply(400, {"error": f"not an image: {exc}"})
            return
        store = self.server.store
        if self.path == "/enroll":
            if not encodings:
                self._reply(422, {"error": "no face"})
                return
            areas = [(b - t) * (r - left) for t, r, b, left in locations]
            best = int(np.argmax(areas))
            label = fields.get("label", b"").decode(errors="replace")
            face_id = store.add(np.asarray(encodings[best]), label)
            self._reply(201, {"face_id": face_id, "label": label})
            return
        if self.path != "/recognize":
            self._reply(404, {"error": "not found"})
            return
        t1 = time.perf_counter()
        faces = []
        if encodings:
            distances, ids = store.search(np.vstack(encodings))
            for (top, right, bottom, left), d, i in zip(
                locations, distances[:, 0], ids[:, 0], strict=True
            ):
                fid = int(i)
                faces.append(
                    {
                        "face_id": fid if fid >= 0 else None,
                        "label": store.labels.get(fid, ""),
                        "distance": float(np.sqrt(max(float(d), 0.0))),
                        "box": [left, top, right - left, bottom - top],
                    }
                )
        timings["search_ms"] = (time.perf_counter() - t1) * 1000
        timings["total_ms"] = (time.perf_counter() - t0) * 1000
        self._reply(200, {"faces": faces, "timings": {k: round(v, 3) for k, v in timings.items()}})


class SeedServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the load generator opens up to this many connections at once

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, Handler)
        self.store = SeedIndex()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.seed_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8199)
    args = parser.parse_args(argv)
    server = SeedServer((args.host, args.port))

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"seed server on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
