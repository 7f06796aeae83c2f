"""Checkpoints on the Hugging Face hub or any HTTP server, read by byte range.

A remote model (``hf://ORG/NAME[@REVISION][/FILE]`` or ``https://HOST/DIR/[FILE]``) is
mirrored into a local cache directory shaped like the model's own: config.json and the
index whole, every shard a sparse file of its remote size whose byte ranges are fetched
on first read. Every local reader (headers, :class:`~moetopo.checkpoint.reader.TensorReader`)
then works unchanged, a killed run resumes from what the cache holds, and a second run
fetches nothing.

HTTP goes through huggingface_hub's session: the hub library's own configured client
(proxies, CA bundle, user agent), so hub and plain HTTPS servers are read the same way
and a hub login is honoured without our own credential handling. The token comes from
``HF_TOKEN`` or ``hf auth login`` (``huggingface_hub.get_token``) and is sent to hub URLs
only; it is never logged nor written anywhere.

Every response is checked before its bytes are used: status 206, a Content-Range equal to
the range asked for, a body of exactly that length, and the ETag and size the cache began
with (a file changed mid-run is an error, never a silent mix of two versions). Resets,
429 and 5xx are retried with exponential backoff (honouring Retry-After) within a bounded
total time, after which the error names the URL and the tensor.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from moetopo.errors import DISPLAY_NAMES, CheckpointError

PREFIXES = ("hf://", "https://", "http://")
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
SMALL_FILES = ("config.json",)
MAX_SMALL_BYTES = 256 << 20  # an index or config larger than this is not one
PART_BYTES = 16 << 20  # a large range is fetched as parts of this size, several in flight
WORKERS = 8
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
META_DIR = ".moetopo"
LISTING = "listing.json"


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying one request: exponential backoff from ``first_delay``
    (capped at ``max_delay``, or what Retry-After asks), for at most ``max_wait`` seconds."""

    max_wait: float = 300.0
    first_delay: float = 0.5
    max_delay: float = 30.0
    timeout: float = 60.0


POLICY = RetryPolicy(max_wait=float(os.environ.get("MOETOPO_REMOTE_MAX_WAIT", 300)))


def is_remote(path: str | os.PathLike) -> bool:
    return isinstance(path, str) and path.startswith(PREFIXES)


def cache_root() -> Path:
    """``MOETOPO_CACHE`` or ``$XDG_CACHE_HOME/moetopo`` (``~/.cache/moetopo``)."""
    if os.environ.get("MOETOPO_CACHE"):
        return Path(os.environ["MOETOPO_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "moetopo"


@dataclass(frozen=True)
class Location:
    """Where a remote model lives: the URL its files sit under, and an optional file."""

    display: str
    base_url: str  # ends with "/"
    file: str | None  # a single named file (a .safetensors or a .gguf), or None
    hub: bool  # send the hub token

    def url(self, name: str) -> str:
        return self.base_url + quote(name)

    @property
    def cache_dir(self) -> Path:
        key = hashlib.sha256(self.base_url.encode()).hexdigest()[:24]
        return cache_root() / "remote" / key


def parse_location(text: str) -> Location:
    """``hf://ORG/NAME[@REV][/FILE]`` (against ``HF_ENDPOINT``) or an http(s) URL of a
    model directory (ending in ``/``) or of one file."""
    if text.startswith("hf://"):
        match = re.fullmatch(r"hf://([^/@\s]+)/([^/@\s]+)(?:@([^/\s]+))?(?:/(\S+))?", text)
        if not match:
            raise CheckpointError(text, "not a hub location: use hf://ORG/NAME[@REVISION][/FILE]")
        org, name, revision, file = match.groups()
        from huggingface_hub import constants

        endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
        revision = quote(revision or "main", safe="")
        return Location(text, f"{endpoint}/{org}/{name}/resolve/{revision}/", file, True)
    if not is_remote(text):
        raise CheckpointError(text, "not a remote location (hf://, https:// or http://)")
    if text.endswith("/"):
        return Location(text, text, None, False)
    head, _, tail = text.rpartition("/")
    if tail.endswith((".safetensors", ".gguf")):
        return Location(text, head + "/", tail, False)
    return Location(text, text + "/", None, False)


class FetchStats:
    """Bytes and requests this process fetched, for the stage log and the benchmark."""

    def __init__(self):
        self.bytes = 0
        self.requests = 0
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.bytes += nbytes
            self.requests += 1


FETCHED = FetchStats()


@dataclass
class Response:
    body: bytes
    size: int
    etag: str | None
    revision: str | None


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _Missing(Exception):
    pass


def _session():
    from huggingface_hub import get_session

    return get_session()


def _auth(hub: bool) -> dict[str, str]:
    if not hub:
        return {}
    from huggingface_hub import get_token

    token = get_token()
    return {"authorization": f"Bearer {token}"} if token else {}


def http_get(
    url: str,
    hub: bool,
    byte_range: tuple[int, int] | None = None,
    tensor: str | None = None,
) -> Response:
    """GET ``url`` (the bytes ``[begin, end)`` of it with ``byte_range``), checked and
    retried as the module says. A 404 raises FileNotFoundError."""
    import httpx2

    policy = POLICY

    headers = _auth(hub)
    if byte_range is not None:
        headers["range"] = f"bytes={byte_range[0]}-{byte_range[1] - 1}"
    start, attempt = time.monotonic(), 0
    while True:
        try:
            return _checked_get(_session(), url, headers, byte_range, policy)
        except _Missing:
            raise FileNotFoundError(url) from None
        except _Transient as exc:
            reason, retry_after = str(exc), exc.retry_after
        except httpx2.TransportError as exc:
            reason, retry_after = f"{type(exc).__name__}: {exc}", None
        delay = min(policy.max_delay, policy.first_delay * 2**attempt)
        delay = max(delay, retry_after or 0.0)
        attempt += 1
        elapsed = time.monotonic() - start
        if elapsed + delay > policy.max_wait:
            raise CheckpointError(
                url,
                f"gave up after {attempt} attempt(s) in {elapsed:.1f} s (limit "
                f"{policy.max_wait:g} s, MOETOPO_REMOTE_MAX_WAIT); last: {reason}",
                tensor,
            )
        time.sleep(delay)


def _checked_get(session, url, headers, byte_range, policy) -> Response:
    with session.stream(
        "GET", url, headers=headers, follow_redirects=True, timeout=policy.timeout
    ) as response:
        status = response.status_code
        if status == 404:
            raise _Missing
        if status in RETRY_STATUS:
            raise _Transient(f"HTTP {status}", _retry_after(response.headers.get("retry-after")))
        if status in (401, 403):
            raise CheckpointError(
                url, f"HTTP {status}: not authorised (set HF_TOKEN or run `hf auth login`)"
            )
        if status == 416:
            raise CheckpointError(url, "HTTP 416: the range asked for lies beyond the file's end")
        if byte_range is not None and status != 206:
            raise CheckpointError(
                url, f"HTTP {status} to a range request: the server does not serve byte ranges"
            )
        if status not in (200, 206):
            raise CheckpointError(url, f"HTTP {status}")
        body = response.read()
        info = response.headers
        # the hub answers a large file's resolve URL with a redirect to its CDN: the
        # commit and the file's own ETag are on that first answer
        hops = [*response.history, response]
    etag = _first(hops, "x-linked-etag") or info.get("etag")
    revision = _first(hops, "x-repo-commit")
    if byte_range is None:
        return Response(body, len(body), etag, revision)
    begin, end = byte_range
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", info.get("content-range", "").strip())
    if not match or (int(match[1]), int(match[2]) + 1) != (begin, end):
        raise _Transient(
            f"Content-Range {info.get('content-range')!r} does not answer bytes {begin}-{end - 1}"
        )
    if len(body) != end - begin:
        raise _Transient(f"short body: {len(body)} of {end - begin} bytes")
    FETCHED.add(len(body))
    return Response(body, int(match[3]), etag, revision)


def _first(responses, header: str) -> str | None:
    return next((r.headers[header] for r in responses if header in r.headers), None)


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to the backoff


class RemoteFile:
    """One remote file mirrored into a sparse local file, with a record of which byte
    ranges it holds and of the remote's size, ETag and revision when the cache began."""

    def __init__(self, location: Location, name: str):
        self.location, self.name = location, name
        self.url = location.url(name)
        self.path = location.cache_dir / name
        self.meta_path = location.cache_dir / META_DIR / (name + ".json")
        self.meta: dict = _read_json(self.meta_path) or {}
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.meta["size"]

    @property
    def complete(self) -> bool:
        return bool(self.meta) and _covered(self.meta["ranges"], 0, self.meta["size"])

    def provenance(self) -> dict:
        return {
            "source": self.url,
            "revision": self.meta.get("revision"),
            "etag": self.meta.get("etag"),
        }

    def fetch_whole(self) -> None:
        """A small file (config, index), fetched in one GET."""
        if self.complete:
            return
        response = http_get(self.url, self.location.hub)
        if len(response.body) > MAX_SMALL_BYTES:
            raise CheckpointError(self.url, f"{len(response.body)} bytes: too large for its kind")
        FETCHED.add(len(response.body))
        self._begin(response)
        self._write(0, response.body)
        self._record([(0, len(response.body))])

    def ensure(self, begin: int, end: int, tensor: str | None = None) -> None:
        """Make the bytes ``[begin, end)`` present in the local file, fetching what is not."""
        if end <= begin:
            return
        if self.meta and end > self.size:
            raise CheckpointError(
                self.url, f"bytes {begin}-{end - 1} lie beyond the file's {self.size} bytes", tensor
            )
        with self._lock:
            missing = _gaps(self.meta["ranges"], begin, end) if self.meta else [(begin, end)]
            if missing and self.meta:
                self.meta = _read_json(self.meta_path) or self.meta  # another job's fetches
                missing = _gaps(self.meta["ranges"], begin, end)
            if not missing:
                return
            parts = [
                (b, min(e, b + PART_BYTES)) for b0, e in missing for b in range(b0, e, PART_BYTES)
            ]
            if len(parts) == 1:
                self._fetch(parts[0], tensor)
            else:  # each part written as it arrives: memory holds WORKERS parts at most
                with ThreadPoolExecutor(min(WORKERS, len(parts))) as pool:
                    list(pool.map(lambda p: self._fetch(p, tensor), parts))
            self._record(parts)

    def _fetch(self, part: tuple[int, int], tensor: str | None) -> None:
        response = http_get(self.url, self.location.hub, part, tensor)
        if not self.meta:
            self._begin(response)
        else:
            self._check_same(response, tensor)
        self._write(part[0], response.body)

    def _begin(self, response: Response) -> None:
        """The first contact: record what this cache mirrors, and size the sparse file."""
        self.meta = {
            "url": self.url,
            "size": response.size,
            "etag": response.etag,
            "revision": response.revision,
            "ranges": [],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as handle:
            handle.truncate(response.size)

    def _check_same(self, response: Response, tensor: str | None) -> None:
        was = (self.meta["etag"], self.meta["size"])
        now = (response.etag, response.size)
        if now != was:
            raise CheckpointError(
                self.url,
                f"the remote file changed (ETag {was[0]!r}, {was[1]} bytes when the cache "
                f"began; now {now[0]!r}, {now[1]} bytes): the cache at "
                f"{self.location.cache_dir} holds the old version. Pin a revision, or delete "
                "that directory and re-run",
                tensor,
            )

    def _write(self, offset: int, body: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, body, offset)
        finally:
            os.close(fd)

    def _record(self, ranges: list[tuple[int, int]]) -> None:
        """Record written ranges (merged with other processes' records under a file
        lock, replaced atomically). Bytes are written before their record: a kill between
        the two only loses the record, so those bytes are fetched again, never trusted
        unwritten. (Not fsynced: a killed process's writes survive in the page cache; only
        a crash of the machine itself could leave a record of bytes never on disk.)"""
        self.meta_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.meta_path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            on_disk = _read_json(self.meta_path)
            held = list(self.meta["ranges"]) + [list(r) for r in ranges]
            if on_disk and (on_disk["etag"], on_disk["size"]) == (self.meta["etag"], self.size):
                held += on_disk["ranges"]
            self.meta["ranges"] = _merged(held)
            _write_json(self.meta_path, self.meta)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _merged(ranges: list) -> list[list[int]]:
    out: list[list[int]] = []
    for begin, end in sorted(ranges):
        if out and begin <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([begin, end])
    return out


def _gaps(ranges: list, begin: int, end: int) -> list[tuple[int, int]]:
    """The parts of ``[begin, end)`` that the sorted, merged ``ranges`` do not cover."""
    gaps, cursor = [], begin
    for b, e in ranges:
        if e <= cursor:
            continue
        if b >= end:
            break
        if b > cursor:
            gaps.append((cursor, b))
        cursor = max(cursor, e)
        if cursor >= end:
            break
    if cursor < end:
        gaps.append((cursor, end))
    return gaps


def _covered(ranges: list, begin: int, end: int) -> bool:
    return not _gaps(ranges, begin, end)


@dataclass
class Mirror:
    """A remote model's local mirror: the directory to list, and its remote files."""

    location: Location
    root: Path
    small: tuple[str, ...]
    files: dict[str, RemoteFile] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """What to list: the directory, or the one named file."""
        return self.root / self.location.file if self.location.file else self.root


# local mirror path -> its remote file, for every file of every model mirrored in this process
_OPEN: dict[str, RemoteFile] = {}
_MIRRORS: dict[str, Mirror] = {}


def ensure(path: str | os.PathLike, begin: int, end: int, tensor: str | None = None) -> None:
    """Make ``[begin, end)`` of ``path`` readable: a no-op for a local file, a fetch of
    what is missing for a mirrored remote one."""
    remote = _OPEN.get(str(path))
    if remote is not None:
        remote.ensure(begin, end, tensor)


def prefetch(ranges: Iterable[tuple[str | os.PathLike, int, int, str | None]]) -> None:
    """Start fetching many ranges of mirrored files (the routers of every layer, say)
    in the background, several requests in flight, while the caller reads them in order:
    a read of a range not fetched yet fetches it itself, one being fetched waits for it.
    Local files are skipped; a failure surfaces when the caller reads that range."""
    wanted = [(r, b, e, t) for p, b, e, t in ranges if (r := _OPEN.get(str(p))) is not None]
    if not wanted:
        return

    def fetch_all() -> None:
        with ThreadPoolExecutor(WORKERS) as pool:
            for future in [pool.submit(r.ensure, b, e, t) for r, b, e, t in wanted]:
                future.exception()  # the reader that needs the range raises it

    threading.Thread(target=fetch_all, name="moetopo-prefetch", daemon=True).start()


def provenance(path: str | os.PathLike) -> dict | None:
    """Where a mirrored file came from (URL, revision, ETag); None for a local file."""
    remote = _OPEN.get(str(path))
    return remote.provenance() if remote is not None else None


def display(path: str | os.PathLike) -> str:
    """A path as the user should read it: a mirrored file by its URL."""
    return DISPLAY_NAMES.get(str(path), str(path))


def mirrored_bytes() -> int:
    """Total size of the remote shards mirrored in this process (what a download costs)."""
    return sum(
        f.size for m in _MIRRORS.values() for n, f in m.files.items() if n not in m.small and f.meta
    )


def mirror(text: str) -> Mirror:
    """The local mirror of the remote model ``text``: small files fetched whole, shard
    headers fetched (two range reads each, many shards at once). Once a mirror's listing
    is recorded, opening it again needs no network."""
    if text in _MIRRORS:
        return _MIRRORS[text]
    location = parse_location(text)
    root = location.cache_dir
    listing_path = root / META_DIR / LISTING
    listing = _read_json(listing_path)
    if listing is None or listing.get("base_url") != location.base_url:
        listing = _list_remote(location)
        root.joinpath(META_DIR).mkdir(parents=True, exist_ok=True)
        _write_json(listing_path, listing)
    result = Mirror(location, root, tuple(listing["small"]))
    for name in listing["small"] + listing["shards"]:
        remote = RemoteFile(location, name)
        result.files[name] = remote
        _OPEN[str(root / name)] = remote
        DISPLAY_NAMES[str(root / name)] = remote.url
    DISPLAY_NAMES[str(root)] = location.display
    _MIRRORS[text] = result
    return result


def _list_remote(location: Location) -> dict:
    """Fetch the small files and every shard's header; name the shards."""
    small = []
    for name in SMALL_FILES + (() if location.file else (INDEX,)):
        remote = RemoteFile(location, name)
        try:
            remote.fetch_whole()
            small.append(name)
        except FileNotFoundError:
            continue
    if location.file:
        shards = _split_parts(location, location.file)
    elif INDEX in small:
        try:
            weight_map = json.loads((location.cache_dir / INDEX).read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(location.url(INDEX), f"index has no weight_map ({exc})") from exc
    else:
        shards = [SINGLE]
    files = [RemoteFile(location, name) for name in shards]
    try:
        fetch_headers(files)
    except FileNotFoundError as exc:
        if location.file or INDEX in small:
            raise CheckpointError(str(exc), "named by the model but not found (HTTP 404)") from None
        raise CheckpointError(
            location.display,
            f"no {INDEX} and no {SINGLE} here (HTTP 404); for a GGUF model name its file, "
            "e.g. hf://ORG/NAME/model-Q4_K_M.gguf",
        ) from None
    return {"base_url": location.base_url, "small": small, "shards": shards}


def _split_parts(location: Location, name: str) -> list[str]:
    """A GGUF split set named by any of its parts: all of its parts."""
    match = re.fullmatch(r"(.*)-(\d{5})-of-(\d{5})\.gguf", name)
    if not match:
        return [name]
    stem, count = match[1], int(match[3])
    return [f"{stem}-{k:05d}-of-{count:05d}.gguf" for k in range(1, count + 1)]


def fetch_headers(files: list[RemoteFile]) -> None:
    """Every file's header, several files at once: a safetensors header by two range
    reads (its length, then the JSON); a GGUF header by a prefix grown until it holds
    the whole header."""

    def one(remote: RemoteFile) -> None:
        if remote.name.endswith(".gguf"):
            _fetch_gguf_header(remote)
            return
        remote.ensure(0, 8)
        with open(remote.path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
        if 8 + length <= remote.size:  # else the header reader reports the truncation
            remote.ensure(8, 8 + length)

    with ThreadPoolExecutor(min(WORKERS, max(1, len(files)))) as pool:
        list(pool.map(one, files))


GGUF_PREFIX = 1 << 20


def _fetch_gguf_header(remote: RemoteFile) -> None:
    """A GGUF header has no length field: fetch a prefix, parse it, and fetch more while
    the parse reads beyond what is fetched (bytes past the prefix are zeros, so a parse
    that ran into them ends beyond the prefix)."""
    from moetopo.checkpoint.gguf import gguf_header_end

    remote.ensure(0, 8)
    fetched = min(GGUF_PREFIX, remote.size)
    while True:
        remote.ensure(0, fetched)
        end = gguf_header_end(remote.path)
        if end <= fetched or fetched == remote.size:
            return
        fetched = min(remote.size, max(2 * fetched, end))
