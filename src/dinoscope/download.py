"""Downloading an image over http(s), and the address guard a server puts in front of it.

`fetch_url` is the one HTTP client: the image loader uses it for URLs given by the person
running dinoscope; the explorer hands it `guarded_opener()`, whose connections refuse
loopback, private and other non-public addresses (checked on the address actually connected
to, redirects included), because there the URL comes from a remote user.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from .errors import InputError, brief as _brief, clipped as _label, input_error as _error, one_line as _one_line

__all__ = ["DEFAULT_MAX_BYTES", "address_allowed", "fetch_url", "guarded_opener", "url_label"]

# Content types accepted from a web server besides image/*; other types are refused.
_BINARY_CONTENT_TYPES = frozenset(
    {
        "application/octet-stream",
        "binary/octet-stream",
        "application/binary",
        "application/x-binary",
        "application/unknown",
        "application/download",
        "application/x-download",
        "application/force-download",
    }
)

_USER_AGENT = "dinoscope/0.1 (+https://github.com/; python-urllib)"
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
#: Largest download accepted from a URL.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Let 3xx responses surface as HTTPError so fetch_url follows them itself."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_NoRedirect())


def _check_url(url: str) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise _error(f"{_label(url)} is not a valid URL ({_brief(exc)}); check the address") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"{scheme}://" if scheme else "an address without http:// or https://"
        raise _error(f"cannot download {url_label(url)}: {shown} is not supported; use an http or https URL")
    if not parts.hostname:
        raise _error(f"{url_label(url)} has no host name; give a full URL such as https://example.com/photo.jpg")
    return parts


def url_label(url: str) -> str:
    """The URL for messages, without any user:password@ part."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.username is not None or parts.password is not None:
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            netloc = host + (f":{parts.port}" if parts.port else "")
            url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        pass
    return _label(url)


def _quote_url(url: str) -> str:
    """Percent-encode spaces and non-ASCII characters that http.client refuses."""
    return urllib.parse.quote(url, safe=":/?#[]@!$&'()*+,;=%~")


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, socket.timeout)) or "timed out" in str(exc).lower()


def _network_error(label: str, exc: BaseException, timeout: float) -> InputError:
    reason = getattr(exc, "reason", exc)
    if _is_timeout(reason) or _is_timeout(exc):
        return _error(f"could not download {label}: no answer within the timeout of {timeout:g} s; try again later or download the file and pass its path")
    return _error(
        f"could not download {label}: {_brief(reason) if isinstance(reason, BaseException) else _one_line(str(reason))}; "
        "check the address or your network; or download the file and pass its path"
    )


def fetch_url(
    url: str,
    *,
    timeout: float = 20.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_redirects: int = 5,
    deadline: float | None = None,
    opener: urllib.request.OpenerDirector | None = None,
) -> bytes:
    """Download an image over http(s) with the standard library and return its bytes.

    `timeout` (seconds) bounds connecting and each wait for data; `deadline`
    (seconds, default ``3 * timeout``) bounds the whole download, so a server that
    trickles bytes forever is cut off. At most `max_bytes` are accepted, checked on
    Content-Length and while streaming. Redirects are followed by hand, at most
    `max_redirects` of them, only to http(s), and a loop is refused. A Content-Type
    that is neither image/* nor a generic binary type (or absent) is refused.

    `opener` replaces the default urllib opener (it must not follow redirects itself);
    the web explorer passes one whose connections refuse private addresses.

    Every failure raises :class:`InputError` with a one-line message.
    """
    _check_fetch_arguments(url, timeout, deadline, max_bytes, max_redirects)
    total = 3.0 * timeout if deadline is None else float(deadline)
    started = time.monotonic()
    current = url.strip()
    original = url_label(current)
    seen: set[str] = set()
    opener = opener or _opener()
    redirects = 0
    while True:
        _check_url(current)
        seen.add(current)
        label = url_label(current)
        remaining = total - (time.monotonic() - started)
        if remaining <= 0:
            raise _error(
                f"could not download {original}: it took longer than {total:g} s; "
                "try again later or download the file and pass its path"
            )
        try:
            request = _request(current)
            response = opener.open(request, timeout=min(timeout, remaining))
        except urllib.error.HTTPError as exc:
            try:
                target = _redirect_target(exc, current, label)
            finally:
                with contextlib.suppress(Exception):
                    exc.close()
            redirects += 1
            if target in seen:
                raise _error(f"could not download {original}: the server redirects in a loop; give the final image URL") from exc
            if redirects > max_redirects:
                raise _error(f"could not download {original}: more than {max_redirects} redirects; give the final image URL") from exc
            if urllib.parse.urlsplit(target).scheme.lower() not in ("http", "https"):
                raise _error(f"could not download {original}: it redirects to a non-http(s) address; give the final image URL") from exc
            current = target
            continue
        except urllib.error.URLError as exc:
            raise _network_error(label, exc, timeout) from exc
        except (http.client.HTTPException, OSError, ValueError, UnicodeError) as exc:
            raise _network_error(label, exc, timeout) from exc
        with response:
            return _read_body(response, label, timeout, max_bytes, started, total)


def _check_fetch_arguments(url, timeout, deadline, max_bytes, max_redirects) -> None:
    if not isinstance(url, str):
        raise _error(f"a URL must be a str, not {type(url).__name__}; pass it as text")
    for name, value in (("timeout", timeout), ("deadline", deadline)):
        if value is None and name == "deadline":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise _error(f"the download {name} must be a positive number of seconds, not {value!r}")
    for name, value in (("max_bytes", max_bytes), ("max_redirects", max_redirects)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "max_bytes" else 0):
            raise _error(f"{name} must be a {'positive' if name == 'max_bytes' else 'non-negative'} whole number, not {value!r}")


def _request(url: str) -> urllib.request.Request:
    """A GET request; user:password@ in the URL becomes a Basic Authorization header."""
    headers = {"User-Agent": _USER_AGENT, "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"}
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None or parts.password is not None:
        user = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
        netloc = parts.netloc.rpartition("@")[2]
        url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return urllib.request.Request(_quote_url(url), headers=headers)


def _redirect_target(exc: urllib.error.HTTPError, current: str, label: str) -> str:
    """The absolute URL a 3xx answer points to; InputError for any other HTTP error."""
    if exc.code not in _REDIRECT_CODES:
        reason = _one_line(str(exc.reason or http.client.responses.get(exc.code, ""))).strip()
        raise _error(f"could not download URL: HTTP {exc.code} {reason} ({label}); check the address") from exc
    location = exc.headers.get("Location") if exc.headers is not None else None
    if not location or not location.strip():
        raise _error(f"could not download {label}: HTTP {exc.code} redirect without a Location; give the final image URL") from exc
    try:
        return urllib.parse.urljoin(current, location.strip())
    except ValueError as exc2:
        raise _error(f"could not download {label}: it redirects to an invalid address; give the final image URL") from exc2


def _read_body(response, label: str, timeout: float, max_bytes: int, started: float, total: float) -> bytes:
    headers = response.headers
    raw_type = headers.get("Content-Type") if headers is not None else None
    if raw_type and raw_type.strip():
        content_type = headers.get_content_type().lower()
        if not (content_type.startswith("image/") or content_type in _BINARY_CONTENT_TYPES):
            if content_type in ("text/html", "application/xhtml+xml"):
                raise _error(f"the URL returned a web page ({content_type}), not an image; give the direct image URL ({label})")
            raise _error(f"the URL returned {content_type}, not an image; give the direct image URL ({label})")
    length = headers.get("Content-Length") if headers is not None else None
    declared = None
    if length is not None:
        try:
            declared = int(length.strip())
        except ValueError:
            declared = None
        if declared is not None and declared > max_bytes:
            raise _error(
                f"could not download {label}: the file is {declared:,} bytes, more than the limit of {max_bytes:,} bytes; "
                "download it yourself and pass its path"
            )
    body = bytearray()
    try:
        while True:
            if time.monotonic() - started > total:
                raise _error(f"could not download {label}: it took longer than {total:g} s; try again later or download the file and pass its path")
            chunk = response.read1(65536)
            if not chunk:
                break
            body += chunk
            if len(body) > max_bytes:
                raise _error(
                    f"could not download {label}: it is larger than the limit of {max_bytes:,} bytes; "
                    "download it yourself and pass its path"
                )
    except InputError:
        raise
    except (http.client.HTTPException, OSError, ValueError) as exc:
        if _is_timeout(exc):
            raise _error(f"could not download {label}: no data within the timeout of {timeout:g} s; try again later or download the file and pass its path") from exc
        raise _error(f"could not download {label}: the connection broke ({_brief(exc)}); try again") from exc
    if declared is not None and len(body) < declared:
        raise _error(
            f"could not download {label}: the connection broke after {len(body):,} of {declared:,} bytes; try again"
        )
    return bytes(body)


# ---------------------------------------------------------------------------
# address guard (no server-side request forgery)


def address_allowed(address: str) -> bool:
    """True only for public unicast addresses: never loopback, private, link-local, shared, reserved or multicast."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if mapped is not None and not address_allowed(str(mapped)):
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_loopback or ip.is_private or ip.is_link_local
                                 or ip.is_reserved or ip.is_unspecified)


def _guarded_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, *args, **kwargs):
    """socket.create_connection that resolves the host itself and connects only to public addresses.

    The address checked is the address connected to, so DNS rebinding cannot slip past the check.
    """
    host, port = address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}") from exc
    error: OSError | None = None
    for family, socktype, proto, _name, sockaddr in infos:
        if not address_allowed(sockaddr[0]):
            raise InputError(f"refusing to download from {host}: it is a local or private address ({sockaddr[0]}); "
                             "give a public image URL or upload the file")
        sock = socket.socket(family, socktype, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError(f"cannot connect to {host}")


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_connection


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_connection


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_GuardedHTTPConnection, req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_GuardedHTTPSConnection, req, context=self._context)


def guarded_opener() -> urllib.request.OpenerDirector:
    """A urllib opener that follows no redirects itself (fetch_url does, hop by hop) and connects only to public addresses."""
    return urllib.request.build_opener(_NoRedirect(), _GuardedHTTPHandler(), _GuardedHTTPSHandler(),
                                       urllib.request.ProxyHandler({}))
