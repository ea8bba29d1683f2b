"""fetch_url and load_image(URL) against a local HTTP server on 127.0.0.1 (no other network)."""

from __future__ import annotations

import base64
import io
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

try:
    import dinoscope.images  # noqa: F401
except ModuleNotFoundError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dinoscope.errors import InputError
from dinoscope.images import fetch_url, load_image

STOP = threading.Event()


def _encode(fmt: str) -> bytes:
    image = Image.new("RGB", (24, 16), (200, 30, 30))
    image.paste((30, 30, 200), (12, 0, 24, 16))
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


PNG = _encode("PNG")
JPEG = _encode("JPEG")
HTML = b"<!DOCTYPE html><html><head><title>Cat</title></head><body><img src='/good.png'></body></html>"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep the test output quiet
        pass

    def _send(self, status: int, body: bytes = b"", content_type: str | None = None, headers=None, length=True):
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _redirect(self, location: str, code: int = 302):
        self._send(code, b"", "text/html", {"Location": location})

    def _stream(self, chunk: bytes, pause: float):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            while not STOP.is_set():
                self.wfile.write(chunk)
                self.wfile.flush()
                if pause:
                    time.sleep(pause)
        except OSError:  # the client hung up
            pass

    def do_GET(self):  # noqa: C901 - a routing table
        path = urllib.parse.unquote(self.path.split("?", 1)[0])
        if path in ("/good.png", "/dir/good.png"):
            self._send(200, PNG, "image/png")
        elif path == "/good.jpg":
            self._send(200, JPEG, "image/jpeg")
        elif path == "/upper.jpg":
            self._send(200, JPEG, "IMAGE/JPEG; charset=binary")
        elif path == "/octet":
            self._send(200, PNG, "application/octet-stream")
        elif path == "/s3":
            self._send(200, PNG, "binary/octet-stream")
        elif path == "/notype":
            self._send(200, PNG, None)
        elif path == "/page.html":
            self._send(200, HTML, "text/html; charset=utf-8")
        elif path == "/json":
            self._send(200, b'{"a": 1}', "application/json")
        elif path == "/html-as-octet":
            self._send(200, HTML, "application/octet-stream")
        elif path == "/missing":
            self._send(404, b"<h1>Not Found</h1>", "text/html")
        elif path == "/boom":
            self._send(500, b"oops", "text/plain")
        elif path == "/loop/a":
            self._redirect("/loop/b")
        elif path == "/loop/b":
            self._redirect("/loop/a", 301)
        elif path == "/self":
            self._redirect("/self", 307)
        elif path.startswith("/chain/"):
            remaining = int(path.rsplit("/", 1)[1])
            self._redirect(f"/chain/{remaining - 1}" if remaining > 0 else "/good.png", 303)
        elif path == "/relative":
            self._redirect("dir/good.png")
        elif path == "/to-ftp":
            self._redirect("ftp://127.0.0.1/good.png")
        elif path == "/to-file":
            self._redirect("file:///etc/passwd")
        elif path == "/no-location":
            self._send(302, b"", "text/html")
        elif path == "/slow":
            STOP.wait(6.0)
            self._send(200, PNG, "image/png")
        elif path == "/slow-body":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG[:10])
            self.wfile.flush()
            STOP.wait(6.0)
        elif path == "/endless":
            self._stream(b"\x00" * 65536, 0.0)
        elif path == "/trickle":
            self._stream(b"\x00", 0.05)
        elif path == "/big":
            self._send(200, b"\x00" * 3_000_000, "image/png")
        elif path == "/huge-declared":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
        elif path == "/short-body":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG) + 1000))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(PNG)
            self.wfile.flush()
            self.close_connection = True
        elif path == "/private.png":
            expected = "Basic " + base64.b64encode(b"user:p@ss word").decode()
            if self.headers.get("Authorization") == expected:
                self._send(200, PNG, "image/png")
            else:
                self._send(401, b"", "text/plain", {"WWW-Authenticate": 'Basic realm="x"'})
        elif path == "/space name.png":
            self._send(200, PNG, "image/png")
        else:
            self._send(404, b"", "text/plain")


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients hanging up early is the point of some tests
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def server():
    STOP.clear()
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        STOP.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def refused(url: str, match: str | None = None, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        fetch_url(url, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    if match is not None:
        assert match.lower() in message.lower(), message
    return message


# ---------------------------------------------------------------------------
# accepted


@pytest.mark.parametrize("path, body", [("/good.png", PNG), ("/good.jpg", JPEG), ("/upper.jpg", JPEG)])
def test_good_images(server, path, body):
    assert fetch_url(server + path, timeout=1) == body


@pytest.mark.parametrize("path", ["/octet", "/s3", "/notype"])
def test_generic_or_missing_content_type_accepted(server, path):
    assert fetch_url(server + path, timeout=1) == PNG
    image = load_image(server + path, timeout=1)
    assert image.mode == "RGB" and image.size == (24, 16)


def test_redirect_chain_within_limit(server):
    assert fetch_url(server + "/chain/3", timeout=1, max_redirects=5) == PNG
    assert fetch_url(server + "/chain/4", timeout=1, max_redirects=5) == PNG  # 5 redirects in all


def test_relative_redirect(server):
    assert fetch_url(server + "/relative", timeout=1) == PNG


def test_url_with_space_is_quoted(server):
    assert fetch_url(server + "/space name.png", timeout=1) == PNG


def test_credentials_in_url_sent_as_basic_auth_and_hidden(server):
    host = server.split("//", 1)[1]
    assert fetch_url(f"http://user:p%40ss%20word@{host}/private.png", timeout=1) == PNG
    message = refused(f"http://user:wrong@{host}/private.png", "HTTP 401", timeout=1)
    assert "wrong" not in message and "user" not in message


def test_load_image_end_to_end(server):
    image = load_image(server + "/good.png", timeout=1)
    assert image.mode == "RGB"
    assert image.size == (24, 16)
    assert image.getpixel((2, 2)) == (200, 30, 30)
    assert image.getpixel((20, 2)) == (30, 30, 200)
    jpeg = load_image(server + "/good.jpg", timeout=1)
    assert jpeg.size == (24, 16)


# ---------------------------------------------------------------------------
# refused


@pytest.mark.parametrize("path,expected", [
    ("/page.html", "the URL returned a web page (text/html), not an image; give the direct image URL"),
    ("/missing", "could not download URL: HTTP 404 Not Found"),
])
def test_refusal_says_exactly(server, path, expected):
    message = refused(server + path, timeout=1)
    assert expected in message


@pytest.mark.parametrize("path,expected", [("/json", "application/json"), ("/boom", "HTTP 500"),
                                           ("/no-location", "Location")])
def test_refusal_names_the_cause(server, path, expected):
    refused(server + path, expected, timeout=1)


def test_html_served_as_octet_stream_caught_by_sniffing(server):
    with pytest.raises(InputError, match="web page"):
        load_image(server + "/html-as-octet", timeout=1)


def test_redirect_loop(server):
    refused(server + "/loop/a", "loop", timeout=1)
    refused(server + "/self", "loop", timeout=1)


def test_too_many_redirects(server):
    refused(server + "/chain/5", "more than 5 redirects", timeout=1, max_redirects=5)
    refused(server + "/chain/1", "more than 1 redirects", timeout=1, max_redirects=1)


@pytest.mark.parametrize("path", ["/to-ftp", "/to-file"])
def test_redirect_to_other_scheme(server, path):
    refused(server + path, "non-http", timeout=1)


def test_slow_server_times_out(server):
    start = time.monotonic()
    message = refused(server + "/slow", "timeout", timeout=1)
    assert "1 s" in message
    assert time.monotonic() - start < 4  # the server answers only after 6 s


@pytest.mark.parametrize("path,expected,options", [
    pytest.param("/slow-body", "timeout", {}, id="stalled-body-times-out"),
    pytest.param("/endless", "limit of 1,000,000 bytes", {"max_bytes": 1_000_000}, id="endless-body-hits-size-limit"),
    pytest.param("/trickle", "longer than", {"deadline": 1.0}, id="trickling-body-hits-deadline"),
    pytest.param("/trickle", "longer than 1.5 s", {"timeout": 0.5}, id="default-deadline-is-three-timeouts"),
])
def test_body_that_never_ends_is_cut_off(server, path, expected, options):
    start = time.monotonic()
    refused(server + path, expected, **{"timeout": 1, **options})
    assert time.monotonic() - start < 4


def test_content_length_over_limit(server):
    start = time.monotonic()
    message = refused(server + "/big", "3,000,000 bytes", timeout=1, max_bytes=1_000_000)
    assert "1,000,000" in message
    assert time.monotonic() - start < 2
    refused(server + "/huge-declared", "limit", timeout=1)


def test_exactly_at_limit_is_accepted(server):
    assert fetch_url(server + "/good.png", timeout=1, max_bytes=len(PNG)) == PNG
    refused(server + "/good.png", "limit", timeout=1, max_bytes=len(PNG) - 1)


def test_short_body_is_refused(server):
    refused(server + "/short-body", "connection broke", timeout=1)


def test_load_image_passes_limits(server):
    with pytest.raises(InputError, match="limit"):
        load_image(server + "/endless", timeout=1, max_bytes=100_000)
    with pytest.raises(InputError, match="404"):
        load_image(server + "/missing", timeout=1)


def test_connection_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    message = refused(f"http://127.0.0.1:{port}/x.png", timeout=1)
    assert "check the address or your network; or download the file and pass its path" in message


def test_dns_failure(monkeypatch):
    def fail(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    message = refused("http://no-such-host.invalid/cat.jpg", timeout=1)
    assert "check the address or your network" in message


@pytest.mark.parametrize(
    "url, match",
    [
        ("ftp://example.com/a.png", "not supported"),
        ("file:///etc/passwd", "not supported"),
        ("example.com/a.png", "not supported"),
        ("http:///nohost.png", "host"),
        ("http://[::1/a.png", "valid URL"),
    ],
)
def test_bad_urls(url, match):
    refused(url, match, timeout=1)


@pytest.mark.parametrize("timeout", [0, -1])
def test_bad_timeout(timeout):
    refused("http://127.0.0.1/x", "timeout", timeout=timeout)
