"""A stand-in for the Hugging Face hub on 127.0.0.1, answering what huggingface_hub asks when downloading.

huggingface_hub reads HF_ENDPOINT; pointed here it lists a repository
(`GET /api/models/{repo}/revision/{rev}` and `/tree/{rev}`), reads each file's metadata
(`HEAD /{repo}/resolve/{rev}/{file}`: `X-Repo-Commit`, `ETag`, `Content-Length`) and then its bytes
(`GET` on the same path). Each repository answers in one of these ways:

- "files": serves its files;
- "gated": 401 with `X-Error-Code: GatedRepo` (not logged in), which huggingface_hub raises as GatedRepoError;
- "forbidden": 403 with `X-Error-Code: GatedRepo` (logged in, licence not accepted);
- "error": 500 on every request;
- "broken": lists and describes its files, then answers 500 when the weights themselves are fetched;
- "stall": lists its files, then never answers the weights request (the client's timeout must fire).

Unknown repositories get 404 `X-Error-Code: RepoNotFound`. `requests` records every path asked for.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

COMMIT = "fa4e0c5b1d2e3f405162738495a6b7c8d9e0f1a2"
WEIGHTS_SUFFIX = ".safetensors"


class FakeHub:
    def __init__(self, stall_seconds: float = 5.0):
        self.repos: dict[str, tuple[str, dict[str, bytes]]] = {}
        self.requests: list[str] = []
        self.stall_seconds = stall_seconds
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, repo_id: str, mode: str = "files", files: dict[str, bytes] | None = None) -> None:
        self.repos[repo_id] = (mode, dict(files or {}))

    def start(self) -> "FakeHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def do_HEAD(self):
            self._answer(body=False)

        def do_GET(self):
            self._answer(body=True)

        def _send(self, status: int, payload: bytes = b"", headers: dict | None = None, body: bool = True):
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def _refuse(self, status: int, code: str, message: str, body: bool):
            self._send(status, json.dumps({"error": message}).encode(),
                       {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}, body)

        def _answer(self, body: bool):
            path = unquote(urlparse(self.path).path)
            hub.requests.append(f"{self.command} {path}")
            api = path.startswith("/api/models/")
            parts = path.removeprefix("/api/models/").lstrip("/").split("/")
            repo_id = "/".join(parts[:2])
            if repo_id not in hub.repos:
                return self._refuse(404, "RepoNotFound", "Repository not found", body)
            mode, files = hub.repos[repo_id]
            if mode in ("gated", "forbidden"):
                status = 401 if mode == "gated" else 403
                return self._refuse(status, "GatedRepo", f"Access to model {repo_id} is restricted.", body)
            if mode == "error":
                return self._send(500, b"internal error", body=body)
            if api:
                return self._api(repo_id, parts[2:], files, body)
            if len(parts) < 5 or parts[2] != "resolve":
                return self._send(404, body=body)
            name = "/".join(parts[4:])
            if name not in files:
                return self._refuse(404, "EntryNotFound", "Entry not found", body)
            data = files[name]
            if name.endswith(WEIGHTS_SUFFIX) and body and mode == "broken":
                return self._send(500, b"internal error")
            if name.endswith(WEIGHTS_SUFFIX) and body and mode == "stall":
                time.sleep(hub.stall_seconds)  # longer than the client's timeout
                return
            etag = hashlib.sha256(data).hexdigest()
            self._send(200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}, body)

        def _api(self, repo_id, rest, files, body):
            if rest[:1] == ["revision"]:
                info = {"id": repo_id, "modelId": repo_id, "sha": COMMIT, "private": False, "gated": False,
                        "siblings": [{"rfilename": n} for n in files]}
            elif rest[:1] == ["tree"]:
                info = [{"type": "file", "oid": hashlib.sha1(d).hexdigest(), "size": len(d), "path": n}
                        for n, d in files.items()]
            else:
                return self._send(404, body=body)
            self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)

    return Handler
