"""The zoo's training text: the running Python's standard library, as code and as prose.

Every machine with Python has these files, so the zoo can be rebuilt offline. The code
domain is the raw ``.py`` sources; the prose domain is their docstrings, extracted with
``ast``. Files go to the held-out split by a hash of their relative path, so the split is
fixed without a random seed and stays stable when the file set changes slightly.
"""

from __future__ import annotations

import ast
import hashlib
import os
import platform
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BOS_ID = 256
EOS_ID = 257  # separates documents in a stream
VOCAB_SIZE = 258
DOMAINS = ("code", "prose")
SPLITS = ("train", "heldout")

# Directories that are not the standard library proper, or are tests / generated data.
SKIP_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idle_test",
        "__pycache__",
        "ensurepip",
        "lib2to3",
        "turtledemo",
        "encodings",
        "pydoc_data",
    }
)
MAX_FILE_BYTES = 200_000
HELDOUT_PER_256 = 26  # about 10 % of files


@dataclass(frozen=True)
class CorpusLimits:
    """Caps in bytes per domain (train + held-out together) so the build stays fast."""

    code_bytes: int = 4_000_000
    prose_bytes: int = 2_000_000


@dataclass
class Corpus:
    """Token streams per (domain, split), byte ids with EOS between documents."""

    streams: dict[tuple[str, str], np.ndarray]
    files: dict[str, list[str]]  # split -> relative paths used
    digest: str
    python_version: str
    stdlib: str
    limits: CorpusLimits
    docs: dict[tuple[str, str], list[str]] = field(default_factory=dict, repr=False)

    def sizes(self) -> dict[str, dict[str, int]]:
        """Bytes (tokens) per domain and split, for the manifest."""
        return {d: {s: int(self.streams[d, s].size) for s in SPLITS} for d in DOMAINS}


def is_heldout(relpath: str) -> bool:
    """Held-out membership from the path alone: stable across runs and machines."""
    return hashlib.sha256(relpath.encode()).digest()[0] < HELDOUT_PER_256


def _order_key(relpath: str) -> str:
    return hashlib.sha256(b"order:" + relpath.encode()).hexdigest()


def stdlib_files(root: Path) -> list[str]:
    """Relative paths of stdlib ``.py`` files, skipping tests, vendored and huge files."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir.parts and (
            rel_dir.parts[0].startswith("config-") or rel_dir.parts[0] == "lib-dynload"
        ):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith("_test"):
                continue
            path = Path(dirpath) / name
            if path.stat().st_size > MAX_FILE_BYTES:
                continue
            out.append((rel_dir / name).as_posix())
    return out


def docstrings(source: str) -> list[str]:
    """Module, class and function docstrings of one source file (cleaned by ``ast``)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = (ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds))
    return [d for d in found if d and len(d) >= 16]


def _stream(docs: list[str]) -> np.ndarray:
    parts: list[np.ndarray] = []
    for doc in docs:
        parts.append(np.frombuffer(doc.encode("utf-8"), dtype=np.uint8).astype(np.uint16))
        parts.append(np.array([EOS_ID], dtype=np.uint16))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def build_corpus(limits: CorpusLimits | None = None, root: Path | None = None) -> Corpus:
    """Read the stdlib in a fixed hash order until the caps are reached."""
    limits = limits or CorpusLimits()
    root = Path(root or sysconfig.get_paths()["stdlib"])
    docs: dict[tuple[str, str], list[str]] = {(d, s): [] for d in DOMAINS for s in SPLITS}
    used: dict[str, list[str]] = {s: [] for s in SPLITS}
    filled = {"code": 0, "prose": 0}
    caps = {"code": limits.code_bytes, "prose": limits.prose_bytes}
    for rel in sorted(stdlib_files(root), key=_order_key):
        if all(filled[d] >= caps[d] for d in DOMAINS):
            break
        try:
            source = (root / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        split = "heldout" if is_heldout(rel) else "train"
        took = False
        if filled["code"] < caps["code"]:
            docs["code", split].append(source)
            filled["code"] += len(source.encode("utf-8"))
            took = True
        if filled["prose"] < caps["prose"]:
            for doc in docstrings(source):
                docs["prose", split].append(doc)
                filled["prose"] += len(doc.encode("utf-8"))
                took = True
        if took:
            used[split].append(rel)
    streams = {key: _stream(value) for key, value in docs.items()}
    digest = hashlib.sha256()
    for key in sorted(streams):
        digest.update(repr(key).encode())
        digest.update(streams[key].tobytes())
    return Corpus(
        streams=streams,
        files={s: sorted(v) for s, v in used.items()},
        digest=digest.hexdigest(),
        python_version=platform.python_version(),
        stdlib=str(root),
        limits=limits,
        docs=docs,
    )


def fixed_windows(stream: np.ndarray, count: int, seq_len: int) -> np.ndarray:
    """Evenly spaced windows: the same evaluation tokens for every model."""
    if stream.size < seq_len:
        raise ValueError(f"stream of {stream.size} tokens is shorter than seq_len {seq_len}")
    starts = np.linspace(0, stream.size - seq_len, num=count).astype(np.int64)
    return np.stack([stream[s : s + seq_len] for s in starts]).astype(np.int64)


def probe_domains(segments: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Each domain's byte range [start, stop) in the probe text its segments make."""
    spans, start = {}, 0
    for domain, text in segments.items():
        stop = start + len(text.encode("utf-8"))
        spans[domain] = (start, stop)
        start = stop
    return spans


def probe_segments(corpus: Corpus, nbytes_per_domain: int = 1024) -> dict[str, str]:
    """Held-out text for router capture, per domain in :data:`DOMAINS` order: whole lines
    of held-out code, then docstrings; the probe text is their concatenation."""
    segments: dict[str, str] = {}
    for domain in DOMAINS:
        chunks: list[str] = []
        taken = 0
        for doc in corpus.docs[domain, "heldout"]:
            for line in doc.splitlines(keepends=True):
                if taken >= nbytes_per_domain:
                    break
                chunks.append(line)
                taken += len(line.encode("utf-8"))
            if taken >= nbytes_per_domain:
                break
            chunks.append("\n")
            taken += 1
        segments[domain] = "".join(chunks)
    return segments
