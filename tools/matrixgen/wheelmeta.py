"""Read package indexes and wheel metadata over HTTP without downloading wheels.

Torch wheels are close to a gigabyte, but what the compatibility matrix needs from them is
small: the core metadata (PEP 658 ``.metadata`` file, or ``*.dist-info/METADATA``) and a
couple of small members. :class:`HttpRangeFile` makes a remote file seekable through HTTP
Range requests so :mod:`zipfile` can read the central directory and one member only.
"""

from __future__ import annotations

import dataclasses
import html.parser
import io
import json
import logging
import re
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from email.parser import HeaderParser
from pathlib import Path
from typing import IO, Any

from pytorch_cuda.ca import find_ca_file
from verify.packages import canonical

logger = logging.getLogger(__name__)

PYPI_SIMPLE = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
DEFAULT_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
USER_AGENT = "pytorch_cuda-matrixgen/1"


class WheelMetaError(Exception):
    """Base error of this module: an index or wheel could not be read."""


class HttpError(WheelMetaError):
    def __init__(self, url: str, status: int | None, reason: str) -> None:
        super().__init__(f"{url}: {status or ''} {reason}".strip())
        self.url = url
        self.status = status
        self.reason = reason


# --------------------------------------------------------------------------- HTTP


def ssl_context() -> ssl.SSLContext:
    """An SSL context trusting the project's CA bundle, else the system one (proxies re-sign TLS).

    The bundle is the one ``build.py`` hands to pip (:func:`pytorch_cuda.ca.find_ca_file`), so one
    precedence of PIP_CERT, SSL_CERT_FILE and REQUESTS_CA_BUNDLE holds for the whole project.
    """
    path = find_ca_file(None)
    if path is None and Path(DEFAULT_CA_BUNDLE).is_file():
        path = Path(DEFAULT_CA_BUNDLE)
    return ssl.create_default_context(cafile=None if path is None else str(path))


@dataclasses.dataclass
class Response:
    url: str
    status: int
    headers: dict[str, str]
    body: bytes


class Http:
    """Small urllib client: retries transient failures, counts requests and bytes."""

    def __init__(self, timeout: float = 60.0, retries: int = 3) -> None:
        self.timeout = timeout
        self.retries = retries
        self._ctx = ssl_context()
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=self._ctx))
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes = 0

    def get(self, url: str, headers: dict[str, str] | None = None) -> Response:
        """GET ``url``; 4xx raises :class:`HttpError` at once, 5xx and network errors retry."""
        hdrs = {"User-Agent": USER_AGENT, **(headers or {})}
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2**attempt, 10))
            req = urllib.request.Request(url, headers=hdrs)
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    body = resp.read()
                    result = Response(
                        resp.geturl(),
                        resp.status,
                        {k.lower(): v for k, v in resp.headers.items()},
                        body,
                    )
            except urllib.error.HTTPError as exc:
                if exc.code < 500 and exc.code != 429:
                    raise HttpError(url, exc.code, str(exc.reason)) from None
                last = exc
            except (urllib.error.URLError, TimeoutError, ConnectionError, ssl.SSLError) as exc:
                last = exc
            else:
                with self._lock:
                    self.requests += 1
                    self.bytes += len(body)
                return result
            logger.debug("retrying %s after %s", url, last)
        raise HttpError(url, getattr(last, "code", None), str(last))

    def get_range(self, url: str, start: int, end: int | None) -> Response:
        """GET bytes ``start..end`` (inclusive); ``start < 0`` asks for the last ``-start`` bytes."""
        if start < 0:
            spec = f"bytes={start}"
        else:
            spec = f"bytes={start}-{'' if end is None else end}"
        resp = self.get(url, {"Range": spec, "Accept-Encoding": "identity"})
        if resp.status != 206:
            raise HttpError(url, resp.status, "server ignored the Range header")
        return resp


# ------------------------------------------------------------------ Range file


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class HttpRangeFile(io.RawIOBase):
    """A read-only, seekable file over HTTP Range requests, for :class:`zipfile.ZipFile`.

    Reads are rounded up to ``block`` bytes and kept (up to ``cache_bytes``), so zipfile's many
    small reads of headers cost one request, while a large member is fetched in one request.
    """

    def __init__(
        self,
        url: str,
        http: Http | None = None,
        *,
        size: int | None = None,
        block: int = 256 * 1024,
        cache_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        super().__init__()
        self.url = url
        self.http = http or Http()
        self.block = block
        self.cache_bytes = cache_bytes
        self._segments: dict[int, bytes] = {}  # start offset -> data
        self._pos = 0
        self.requests = 0
        self.fetched = 0
        self._size = size if size is not None else self._probe_size()

    def _probe_size(self) -> int:
        # A suffix range both gives the total size and pre-loads the zip's end records.
        resp = self.http.get_range(self.url, -self.block, None)
        self.requests += 1
        self.fetched += len(resp.body)
        m = _CONTENT_RANGE.match(resp.headers.get("content-range", ""))
        if not m or m.group(3) == "*":
            raise HttpError(self.url, resp.status, "no usable Content-Range in reply")
        self._segments[int(m.group(1))] = resp.body
        return int(m.group(3))

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if pos < 0:
            raise OSError("negative seek position")
        self._pos = pos
        return pos

    def _cached(self, start: int, end: int) -> bytes | None:
        for seg_start, data in self._segments.items():
            if seg_start <= start and end <= seg_start + len(data):
                return data[start - seg_start : end - seg_start]
        return None

    def _fetch(self, start: int, end: int) -> bytes:
        resp = self.http.get_range(self.url, start, end - 1)
        self.requests += 1
        self.fetched += len(resp.body)
        m = _CONTENT_RANGE.match(resp.headers.get("content-range", ""))
        if not m or int(m.group(1)) != start:
            raise HttpError(self.url, resp.status, "reply covers another range than asked")
        total = sum(len(d) for d in self._segments.values())
        while self._segments and total + len(resp.body) > self.cache_bytes:
            total -= len(self._segments.pop(next(iter(self._segments))))
        if len(resp.body) <= self.cache_bytes:
            self._segments[start] = resp.body
        return resp.body

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._size - self._pos
        start = self._pos
        end = min(self._size, start + size)
        if end <= start:
            return b""
        data = self._cached(start, end)
        if data is None:
            fetch_end = min(self._size, max(end, start + self.block))
            data = self._fetch(start, fetch_end)[: end - start]
        self._pos = end
        return data

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class RemoteWheel:
    """A remote wheel opened lazily as a zip over Range requests."""

    def __init__(self, url: str, http: Http | None = None) -> None:
        self.url = url
        self.http = http or Http()
        self._file: HttpRangeFile | None = None
        self._zip: zipfile.ZipFile | None = None

    @property
    def zip(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._file = HttpRangeFile(self.url, self.http)
            self._zip = zipfile.ZipFile(self._file)
        return self._zip

    def names(self) -> list[str]:
        return self.zip.namelist()

    def info(self, name: str) -> zipfile.ZipInfo:
        return self.zip.getinfo(name)

    def read(self, name: str) -> bytes:
        return self.zip.read(name)

    def open(self, name: str) -> IO[bytes]:
        return self.zip.open(name)

    @property
    def fetched(self) -> int:
        return self._file.fetched if self._file else 0

    def dist_info_member(self, filename: str) -> str:
        """The ``<name>-<ver>.dist-info/<filename>`` member (the top-level dist-info dir)."""
        hits = [
            n for n in self.names()
            if n.count("/") == 1 and n.split("/")[0].endswith(".dist-info")
            and n.endswith("/" + filename)
        ]
        if len(hits) != 1:
            raise WheelMetaError(f"{self.url}: expected one dist-info/{filename}, found {hits}")
        return hits[0]


# -------------------------------------------------------------- simple index


@dataclasses.dataclass(frozen=True)
class IndexFile:
    """One file listed by a simple-API project page."""

    filename: str
    url: str
    sha256: str | None = None
    yanked: bool = False
    core_metadata: bool | None = None  # None: the index did not say


class _AnchorParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self._attrs: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._attrs = dict(attrs)
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._attrs is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._attrs is not None:
            self.anchors.append((self._attrs, "".join(self._text).strip()))
            self._attrs = None


def _split_hash(url: str) -> tuple[str, str | None]:
    base, _, frag = url.partition("#")
    m = re.match(r"sha256=([0-9a-fA-F]{64})", frag)
    return base, (m.group(1).lower() if m else None)


def parse_simple_html(text: str, page_url: str) -> list[IndexFile]:
    """Files of a PEP 503 project page (with PEP 592 yanking and PEP 658/714 metadata attrs)."""
    parser = _AnchorParser()
    parser.feed(text)
    files = []
    for attrs, label in parser.anchors:
        href = attrs.get("href")
        if not href:
            continue
        url, sha = _split_hash(urllib.parse.urljoin(page_url, href))
        filename = urllib.parse.unquote(url.rsplit("/", 1)[-1]) or label
        meta_attr = attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata"))
        has_meta = None if meta_attr is None and "data-core-metadata" not in attrs else (
            meta_attr != "false"
        )
        files.append(IndexFile(filename, url, sha, "data-yanked" in attrs, has_meta))
    return files


def parse_simple_json(data: dict[str, Any], page_url: str) -> list[IndexFile]:
    """Files of a PEP 691 JSON project page."""
    files = []
    for f in data.get("files", []):
        url, frag_sha = _split_hash(urllib.parse.urljoin(page_url, f["url"]))
        sha = (f.get("hashes") or {}).get("sha256") or frag_sha
        meta = f.get("core-metadata", f.get("dist-info-metadata"))
        has_meta = None if meta is None else bool(meta)
        files.append(IndexFile(f["filename"], url, sha, bool(f.get("yanked")), has_meta))
    return files


def project_files(index_url: str, project: str, http: Http) -> list[IndexFile]:
    """List a project's files, asking for PEP 691 JSON and accepting PEP 503 HTML."""
    page = f"{index_url.rstrip('/')}/{project}/"
    resp = http.get(page, {"Accept": f"{SIMPLE_JSON}, text/html;q=0.1"})
    ctype = resp.headers.get("content-type", "").split(";")[0].strip()
    if ctype == SIMPLE_JSON or resp.body[:1] == b"{":
        return parse_simple_json(json.loads(resp.body), resp.url)
    return parse_simple_html(resp.body.decode("utf-8", "replace"), resp.url)


# --------------------------------------------------------------------- wheels


_WHEEL_RE = re.compile(
    r"^(?P<name>[^-]+)-(?P<version>[^-]+)(?:-(?P<build>\d[^-]*))?"
    r"-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$"
)


@dataclasses.dataclass(frozen=True)
class WheelName:
    name: str
    version: str
    build: tuple[int, str] | tuple[()]
    pythons: tuple[str, ...]
    abis: tuple[str, ...]
    platforms: tuple[str, ...]


def parse_wheel_filename(filename: str) -> WheelName | None:
    """Split a wheel file name into its tags; None for anything that is not a wheel."""
    m = _WHEEL_RE.match(filename)
    if not m:
        return None
    build: tuple[int, str] | tuple[()] = ()
    if m.group("build"):
        bm = re.match(r"(\d+)(.*)", m.group("build"))
        assert bm
        build = (int(bm.group(1)), bm.group(2))
    return WheelName(
        canonical(m.group("name")),
        m.group("version"),
        build,
        tuple(m.group("py").split(".")),
        tuple(m.group("abi").split(".")),
        tuple(m.group("plat").split(".")),
    )


# ------------------------------------------------------------------- metadata


class MetadataReader:
    """Fetch core metadata of wheels: PEP 658 first, else the wheel's METADATA by Range."""

    def __init__(self, http: Http) -> None:
        self.http = http
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()
        self._url_locks: dict[str, threading.Lock] = {}
        self.via_pep658 = 0
        self.via_range = 0

    def metadata(self, f: IndexFile) -> str:
        # One lock per URL: threads asking for the same wheel wait for one fetch.
        with self._lock:
            url_lock = self._url_locks.setdefault(f.url, threading.Lock())
        with url_lock:
            if f.url not in self._cache:
                self._cache[f.url] = self._fetch(f)
            return self._cache[f.url]

    def _fetch(self, f: IndexFile) -> str:
        # PyPI's JSON carries no core-metadata key here, yet <url>.metadata exists for many
        # wheels (torch 2.5+, not 2.1-2.4 nor recent torchvision); so try it unless the index
        # said there is none, and read METADATA out of the wheel on a 404.
        if f.core_metadata is not False:
            try:
                text = self.http.get(f.url + ".metadata").body.decode("utf-8")
                with self._lock:
                    self.via_pep658 += 1
                return text
            except HttpError as exc:
                if exc.status not in (403, 404):
                    raise
                logger.debug("no PEP 658 metadata for %s (%s)", f.filename, exc.status)
        wheel = RemoteWheel(f.url, self.http)
        text = wheel.read(wheel.dist_info_member("METADATA")).decode("utf-8")
        with self._lock:
            self.via_range += 1
        logger.debug("read METADATA of %s by Range (%d bytes)", f.filename, wheel.fetched)
        return text


def requires_dist(metadata_text: str) -> list[str]:
    """The Requires-Dist lines of a core metadata document."""
    msg = HeaderParser().parsestr(metadata_text)
    return [str(v) for v in msg.get_all("Requires-Dist") or []]
