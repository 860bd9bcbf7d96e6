"""A model hub on localhost, for the download path: the HTTP API that huggingface_hub's own client speaks (repo info,
file trees, `resolve` with ETag, size, commit headers and byte ranges), served from bytes in memory. Point
HF_ENDPOINT at `HubServer.url` and the real client code runs end to end (`snapshot_download`, `hf_hub_download`,
`HfApi.model_info`, `list_repo_files`, `resolve_revision`); nothing in rewardtune is replaced. It knows `main` and
each repository's commit (`HubServer.commit_of`), not tags, LFS redirects or Xet storage.

    with HubServer({"org/model": {"config.json": b"{}", "model.safetensors": b"..."}}) as hub:
        rt("weights", "org/model", HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0")
        hub.requests            # [(method, path, Range header or None), ...]

`hub.stall_after[("org/model", "model.safetensors")] = 100` makes every GET of that file send 100 bytes, set
`hub.stalled` and hold the rest until `hub.release` is set (then end the connection; later GETs are whole): a
download caught in the middle, to interrupt, that a client's retry cannot finish either."""
from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from urllib.parse import unquote, urlsplit


class HubServer:
    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = {rid: dict(files) for rid, files in repos.items()}
        self.commits = {rid: self.commit_of(rid) for rid in repos}
        self.stall_after: dict[tuple[str, str], int] = {}
        self.stalled, self.release = threading.Event(), threading.Event()
        self.requests: list[tuple[str, str, str | None]] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self):  # noqa: N802 - the http.server interface
                hub._serve(self, body=False)

            def do_GET(self):  # noqa: N802
                hub._serve(self, body=True)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    @staticmethod
    def commit_of(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def __enter__(self) -> HubServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def downloads(self, repo: str) -> list[str]:
        """The files of `repo` whose bytes were asked for (GET on `resolve`), in order."""
        pre = f"/{repo}/resolve/"
        return [p[len(pre):].split("/", 1)[1] for m, p, _ in self.requests if m == "GET" and p.startswith(pre)]

    # ------------------------------------------------------------------------------------------------- serving
    def _serve(self, h: http.server.BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path, h.headers.get("Range")))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m and self._known(m.group(1), m.group(2)):
            return self._json(h, self._info(m.group(1)), body)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if m and self._known(m.group(1), m.group(2)):
            return self._json(h, self._tree(m.group(1), m.group(3) or ""), body)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and self._known(m.group(1), m.group(2)) and m.group(3) in self.repos[m.group(1)]:
            return self._file(h, m.group(1), m.group(3), body)
        self._send(h, 404, b'{"error": "not found"}', {"Content-Type": "application/json",
                                                       "X-Error-Code": "EntryNotFound"}, body)

    def _known(self, repo: str, rev: str | None) -> bool:
        return repo in self.repos and rev in (None, "main", self.commits[repo])

    def _info(self, repo: str) -> dict:
        files = self.repos[repo]
        return {"id": repo, "modelId": repo, "sha": self.commits[repo], "private": False, "disabled": False,
                "siblings": [{"rfilename": p, "size": len(b), "blobId": hashlib.sha1(b).hexdigest()}
                             for p, b in sorted(files.items())]}

    def _tree(self, repo: str, under: str) -> list[dict]:
        files = {p: b for p, b in self.repos[repo].items() if not under or p.startswith(under.rstrip("/") + "/")}
        dirs = sorted({"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})
        return ([{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                 for d in dirs]
                + [{"type": "file", "oid": hashlib.sha1(b).hexdigest(), "size": len(b), "path": p}
                   for p, b in sorted(files.items())])

    def _file(self, h, repo: str, name: str, body: bool) -> None:
        data = self.repos[repo][name]
        base = name.rsplit("/", 1)[-1]
        headers = {"X-Repo-Commit": self.commits[repo], "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                   # as the hub's file storage names a download (the client's progress bar shows it)
                   "Content-Disposition": f'inline; filename*=UTF-8\'\'{base}; filename="{base}";'}
        start = 0
        rng = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range") or "")
        if rng and body:
            start = int(rng.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        payload = data[start:]
        # every GET of a held file stalls until `release`: a client retrying after its read timeout is held too
        stall = self.stall_after.get((repo, name)) if body and not self.release.is_set() else None
        if stall is not None:  # the full length announced, part of it sent, the rest held, the connection ended
            h.send_response(206 if rng else 200)
            for k, v in {**headers, "Content-Length": str(len(payload)), "Connection": "close"}.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(payload[:stall])
            h.wfile.flush()
            self.stalled.set()
            self.release.wait(300)
            h.close_connection = True
            return
        self._send(h, 206 if rng and body else 200, payload, headers, body)

    def _json(self, h, obj, body: bool) -> None:
        self._send(h, 200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, body)

    @staticmethod
    def _send(h, status: int, payload: bytes, headers: dict[str, str], body: bool) -> None:
        h.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(payload))}.items():
            h.send_header(k, v)
        h.end_headers()
        if body:
            h.wfile.write(payload)
