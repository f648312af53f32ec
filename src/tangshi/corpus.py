"""The Tang poetry corpus: fetch, read, convert to simplified, clean, filter, split, and cache.

Sources (``data.source``):
  npm             chinese-poetry@2.0.1 fetched with ``npm pack``, sha512-verified, read from the tarball
  chinese_poetry  a local clone of the chinese-poetry repository, or any folder of ``poet.tang.*.json``
  poems_txt       the course's ``poems.txt``: one ``title:body`` per line
  jsonl           one ``{"title", "author", "body"}`` object per line

Preparation writes ``<data_dir>/prepared/<source>-<key>/`` atomically: ``{train,val,test}.txt`` (one body per
line), ``vocab.json`` and ``meta.json`` (settings, counts, file checksums). The key hashes the source's identity
and every setting, so a warm start only reads text files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tangshi.atomic import atomic_dir
from tangshi.errors import TangshiError
from tangshi.poetics import FORMS, HANZI_RANGES, LINE_PUNCT, detect_form
from tangshi.vocab import Vocab

log = logging.getLogger(__name__)

NPM_SPEC = "chinese-poetry@2.0.1"
NPM_INTEGRITY = "sha512-KtYARvV7CWNtax0na9+Jn6PlhGgSoid7PWyDzXI4KsCEm2odZcqEQyval5koaLygZnM/EQ3lfJ//25K8p3uHNg=="
SOURCES = ("npm", "chinese_poetry", "poems_txt", "jsonl")
SPLITS = ("train", "val", "test")
LOADER_KEYS = ("batch_size", "eval_batch_size", "num_workers", "pin_memory")  # data settings of batching only
# Bump when cleaning or splitting changes, so caches prepared by older code are not reused.
PREP_VERSION = 2
# Near-duplicates (重出 poems, variant readings) share a split: poems sharing a line of at least SHARED_LINE
# characters, or whose character trigrams overlap by Jaccard >= NEAR_JACCARD, are one group.
SHARED_LINE = 4
NEAR_JACCARD = 0.5


class CorpusError(TangshiError):
    """A corpus that cannot be fetched, read or used."""


@dataclass(frozen=True)
class Poem:
    title: str
    author: str
    body: str


@dataclass(frozen=True)
class CorpusConfig:
    """Everything that decides the prepared data; its hash names the cache."""

    source: str = "npm"
    path: str | None = None
    forms: Sequence[str] | None = None
    min_len: int = 10
    max_len: int = 128
    min_freq: int = 2
    val_frac: float = 0.05
    test_frac: float = 0.05
    npm_spec: str = NPM_SPEC
    npm_integrity: str = NPM_INTEGRITY

    @classmethod
    def from_data(cls, data: dict) -> CorpusConfig:
        """From the ``data`` config group (a plain dict); its batching settings are not the corpus's."""
        settings = {k: v for k, v in data.items() if k not in LOADER_KEYS}
        settings["forms"] = tuple(settings["forms"]) if settings.get("forms") else None
        return cls(**settings)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise CorpusError(f"unknown data.source {self.source!r}; allowed: {', '.join(SOURCES)}")
        if self.source != "npm" and not self.path:
            raise CorpusError(f"data.source={self.source} needs data.path pointing at the corpus")
        for form in self.forms or ():
            if form not in FORMS:
                raise CorpusError(f"unknown form {form!r} in data.forms; allowed: {', '.join(FORMS)}")
        if not 1 <= self.min_len <= self.max_len:
            raise CorpusError(f"need 1 <= data.min_len <= data.max_len, got {self.min_len} and {self.max_len}")
        if self.min_freq < 1:
            raise CorpusError(f"data.min_freq must be >= 1, got {self.min_freq}")
        if not (0 < self.val_frac < 1 and 0 < self.test_frac < 1 and self.val_frac + self.test_frac < 1):
            raise CorpusError(
                f"data.val_frac and data.test_frac must be in (0, 1) with a sum below 1, "
                f"got {self.val_frac} and {self.test_frac}"
            )


# ---------------------------------------------------------------------------------------------------------
# Fetching


def npm_integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def fetch_npm(cache_dir: Path, spec: str = NPM_SPEC, integrity: str = NPM_INTEGRITY) -> Path:
    """The verified tarball of ``spec`` in ``cache_dir``, fetched with ``npm pack`` only if not cached."""
    name, _, version = spec.rpartition("@")
    target = cache_dir / f"{name}-{version}.tgz"
    if target.exists():
        if npm_integrity(target) == integrity:
            return target
        log.warning("cached %s fails its integrity check; fetching it again", target)
        target.unlink()
    if shutil.which("npm") is None:
        raise CorpusError(
            f"npm is needed to fetch {spec}; install Node.js, or put the tarball at {target}, "
            "or point data.source/data.path at a local copy"
        )
    log.info("fetching %s with npm pack (about 85 MB)", spec)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".npm-pack.") as tmp:
        proc = subprocess.run(
            ["npm", "pack", spec, "--json", "--pack-destination", tmp],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise CorpusError(f"npm pack {spec} failed: {last}")
        fetched = Path(tmp) / json.loads(proc.stdout)[0]["filename"]
        got = npm_integrity(fetched)
        if got != integrity:
            raise CorpusError(f"{spec} failed its integrity check: expected {integrity}, got {got}")
        # Same file system, so the verified tarball appears under its final name in one step.
        fetched.replace(target)
    return target


# ---------------------------------------------------------------------------------------------------------
# Reading: each reader yields raw (traditional or simplified) poems.


def _poems_from_json(data: object, where: str) -> Iterator[Poem]:
    if not isinstance(data, list):
        raise CorpusError(f"malformed corpus file {where}: expected a JSON list of poems")
    for i, item in enumerate(data):
        paragraphs = item.get("paragraphs") if isinstance(item, dict) else None
        if not isinstance(paragraphs, list) or not all(isinstance(p, str) for p in paragraphs):
            raise CorpusError(f"malformed corpus file {where}: poem {i} has no list of 'paragraphs'")
        yield Poem(str(item.get("title", "")), str(item.get("author", "")), "".join(paragraphs))


def _tang_json_key(name: str) -> int:
    return int(name.rsplit(".", 2)[-2])


def read_npm_tarball(path: Path) -> Iterator[Poem]:
    with tarfile.open(path, "r:gz") as tar:
        members = [
            m for m in tar.getmembers() if re.fullmatch(r"package/dist/quantangshi/poet\.tang\.\d+\.json", m.name)
        ]
        if not members:
            raise CorpusError(f"{path} holds no dist/quantangshi/poet.tang.*.json")
        for m in sorted(members, key=lambda m: _tang_json_key(m.name)):
            f = tar.extractfile(m)
            assert f is not None
            yield from _poems_from_json(json.load(f), f"{path}:{m.name}")


def find_tang_json(root: Path) -> list[Path]:
    """``poet.tang.*.json`` in ``root`` or in the folder of a chinese-poetry clone or package that holds them."""
    for folder in (root, root / "全唐诗", root / "quantangshi", root / "dist" / "quantangshi", root / "json"):
        files = sorted(folder.glob("poet.tang.*.json"), key=lambda p: _tang_json_key(p.name))
        if files:
            return files
    raise CorpusError(f"no poet.tang.*.json found in {root} (nor in its 全唐诗/, quantangshi/ or json/ folder)")


def read_tang_json(files: list[Path]) -> Iterator[Poem]:
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorpusError(f"malformed corpus file {path}: {e}") from None
        yield from _poems_from_json(data, str(path))


def read_poems_txt(path: Path) -> Iterator[Poem]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            m = re.match(r"([^:：]*)[:：](.*)", line)
            if m is None:
                raise CorpusError(f"malformed corpus file {path}: line {lineno} is not 'title:body'")
            yield Poem(m[1].strip(), "", m[2])


def read_jsonl(path: Path) -> Iterator[Poem]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"malformed corpus file {path}: line {lineno}: {e.msg}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("body"), str):
                raise CorpusError(f"malformed corpus file {path}: line {lineno} has no string 'body'")
            yield Poem(str(obj.get("title", "")), str(obj.get("author", "")), obj["body"])


def source_files(cfg: CorpusConfig, data_dir: Path) -> list[Path]:
    """The files a source reads (fetching the npm package if needed); their identity keys the cache."""
    if cfg.source == "npm":
        return [fetch_npm(data_dir / "raw", cfg.npm_spec, cfg.npm_integrity)]
    path = Path(cfg.path).expanduser()  # type: ignore[arg-type]
    if not path.exists():
        raise CorpusError(f"data.path {path} does not exist (data.source={cfg.source})")
    if cfg.source == "chinese_poetry":
        if not path.is_dir():
            raise CorpusError(f"data.source=chinese_poetry needs a folder, but data.path {path} is a file")
        return find_tang_json(path)
    if path.is_dir():
        raise CorpusError(f"data.source={cfg.source} needs a file, but data.path {path} is a folder")
    return [path]


def read_source(cfg: CorpusConfig, files: list[Path]) -> Iterator[Poem]:
    if cfg.source == "npm":
        return read_npm_tarball(files[0])
    if cfg.source == "chinese_poetry":
        return read_tang_json(files)
    if cfg.source == "poems_txt":
        return read_poems_txt(files[0])
    return read_jsonl(files[0])


# ---------------------------------------------------------------------------------------------------------
# Cleaning

_ASCII_PUNCT = str.maketrans({",": "，", ".": "。", "?": "？", "!": "！", ";": "；", ":": "：", "(": "（", ")": "）"})
# Editorial notes and variant readings: （一作「东风」）, 〔…〕, 〖1〗. Innermost first, repeated for nesting.
_NOTE = re.compile(r"（[^（）]*）|〔[^〔〕]*〕|〖[^〖〗]*〗")
# [字] marks a character supplied by the editors: keep the character, drop the brackets, or the line
# loses a syllable. {…} describes a glyph that Unicode lacks, so it counts as unreadable (below).
_SUPPLIED = re.compile(r"\[([^\[\]{}]*)\]")
_QUOTES = re.compile(r"[「」『』《》〈〉“”‘’\s]")
_REPEATED_PUNCT = re.compile(f"([{LINE_PUNCT}])[{LINE_PUNCT}]+")
# What a readable body may contain: CJK ideographs (BMP, extension A, compatibility, extensions B+) and
# the punctuation of the corpus. □ ○ ● … { } / = digits and Latin mark lacunae or encoding trouble.
_READABLE = re.compile(f"[{HANZI_RANGES}{LINE_PUNCT}]+")


def to_simplified(texts: Sequence[str]) -> list[str]:
    """繁→简 with OpenCC's ``t2s``; one call over the joined texts is ~50x faster than one per poem."""
    import opencc

    converter = opencc.OpenCC("t2s")
    out = converter.convert("\n".join(texts)).split("\n")
    if len(out) != len(texts):  # only if a text contained a newline, which clean_body removes first
        return [converter.convert(t) for t in texts]
    return out


def clean_body(body: str) -> str | None:
    """The poem text alone with full-width punctuation, or None when it is unreadable."""
    body = body.translate(_ASCII_PUNCT)
    previous = None
    while previous != body:
        previous, body = body, _NOTE.sub("", body)
    body = _SUPPLIED.sub(r"\1", body)
    body = _QUOTES.sub("", body)
    body = _REPEATED_PUNCT.sub(r"\1", body).lstrip(LINE_PUNCT)
    if not body or not _READABLE.fullmatch(body):
        return None
    return body


def split_of(body: str, val_frac: float, test_frac: float) -> str:
    """The split of a poem, from a hash of its text: the same everywhere, and one text is in one split."""
    u = int.from_bytes(hashlib.blake2b(body.encode(), digest_size=8).digest(), "big") / 2**64
    return "val" if u < val_frac else "test" if u < val_frac + test_frac else "train"


def _trigrams(body: str) -> set[bytes]:
    text = re.sub(f"[{LINE_PUNCT}]", "", body)
    return {text[i : i + 3].encode() for i in range(len(text) - 2)}


def near_duplicate_groups(bodies: Sequence[str]) -> list[int]:
    """For each body, the index of the first body of its group of near-duplicates.

    Two poems are joined when they share a line of at least :data:`SHARED_LINE` characters, or when MinHash
    LSH (datasketch) proposes them and their character trigrams have a Jaccard similarity of at least
    :data:`NEAR_JACCARD` (variant readings that change a character in every line). Groups are the connected
    components, so the result does not depend on the order of ``bodies``, only on the set.
    """
    from datasketch import MinHash, MinHashLSH

    parent = list(range(len(bodies)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        a, b = find(a), find(b)
        if a != b:
            parent[max(a, b)] = min(a, b)

    first_with_line: dict[str, int] = {}
    for i, body in enumerate(bodies):
        for line in re.split(f"[{LINE_PUNCT}]", body):
            if len(line) >= SHARED_LINE:
                union(i, first_with_line.setdefault(line, i))
    grams = [_trigrams(b) for b in bodies]
    hashes = MinHash.bulk([g or {b""} for g in grams], num_perm=64, seed=1)
    lsh = MinHashLSH(threshold=NEAR_JACCARD, num_perm=64)
    for i, h in enumerate(hashes):
        lsh.insert(i, h)
    for i, h in enumerate(hashes):
        for j in lsh.query(h):
            if j > i and find(i) != find(j) and len(grams[i] & grams[j]) >= NEAR_JACCARD * len(grams[i] | grams[j]):
                union(i, j)
    return [find(i) for i in range(len(bodies))]


def grouped_splits(bodies: Sequence[str], val_frac: float, test_frac: float) -> tuple[list[str], int]:
    """The split of every body, one per group of near-duplicates (the hash of the group's first body in sorted
    order, so it is the same on every machine), and how many poems that moved from their own hash's split."""
    groups = near_duplicate_groups(bodies)
    key: dict[int, str] = {}
    for i, g in enumerate(groups):
        key[g] = min(key.get(g, bodies[i]), bodies[i])
    splits = [split_of(key[g], val_frac, test_frac) for g in groups]
    moved = sum(s != split_of(b, val_frac, test_frac) for s, b in zip(splits, bodies, strict=True))
    return splits, moved


def clean(poems: Iterable[Poem], cfg: CorpusConfig) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Bodies per split after each cleaning step, and the number of poems left after each step."""
    raw = [Poem(p.title, p.author, re.sub(r"\s+", "", p.body)) for p in poems]
    counts = {"read": len(raw)}
    log.info("read %d poems", len(raw))
    if not raw:
        raise CorpusError("the corpus is empty: no poems were read")

    bodies = to_simplified([p.body for p in raw])
    cleaned = [b for b in map(clean_body, bodies) if b is not None]
    counts["readable"] = len(cleaned)
    log.info(
        "kept %d readable poems (dropped %d with lacunae, missing glyphs or non-CJK text)",
        len(cleaned),
        len(raw) - len(cleaned),
    )

    unique = list(dict.fromkeys(cleaned))
    counts["unique"] = len(unique)
    log.info("kept %d unique bodies (dropped %d exact duplicates)", len(unique), len(cleaned) - len(unique))

    if cfg.forms:
        wanted = set(cfg.forms)
        unique = [b for b in unique if detect_form(b) in wanted]
        counts["form"] = len(unique)
        log.info("kept %d poems of forms %s", len(unique), ", ".join(sorted(wanted)))

    kept = [b for b in unique if cfg.min_len <= len(b) <= cfg.max_len]
    counts["length"] = len(kept)
    log.info("kept %d poems of %d to %d characters", len(kept), cfg.min_len, cfg.max_len)

    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    assigned, moved = grouped_splits(kept, cfg.val_frac, cfg.test_frac)
    for body, split in zip(kept, assigned, strict=True):
        splits[split].append(body)
    counts["near_duplicates_moved"] = moved
    for s in SPLITS:
        counts[s] = len(splits[s])
    log.info(
        "split: %s (%d poems moved to the split of a near-duplicate)",
        ", ".join(f"{s} {len(splits[s])}" for s in SPLITS),
        moved,
    )
    if not all(splits[s] for s in SPLITS):
        raise CorpusError(
            f"a split is empty after filtering ({len(kept)} poems left; "
            + ", ".join(f"{s} {len(splits[s])}" for s in SPLITS)
            + "): relax data.forms or data.min_len/max_len, raise data.val_frac/test_frac, or use a larger corpus"
        )
    return splits, counts


# ---------------------------------------------------------------------------------------------------------
# The prepared cache


@dataclass
class Prepared:
    path: Path
    splits: dict[str, list[str]]
    vocab: Vocab
    meta: dict


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_key(cfg: CorpusConfig, files: list[Path]) -> str:
    if cfg.source == "npm":
        identity: object = cfg.npm_integrity
    else:  # a local source is identified by where it is and what it holds
        identity = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    settings = {k: v for k, v in asdict(cfg).items() if k != "path"}
    settings["forms"] = sorted(cfg.forms) if cfg.forms else None
    blob = json.dumps([PREP_VERSION, identity, settings], sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _load_cache(path: Path) -> Prepared | None:
    """The cached data, or None (with a warning) when anything is missing or fails its checksum."""
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        for name, digest in meta["sha256"].items():
            if _sha256(path / name) != digest:
                raise ValueError(f"{name} fails its checksum")
        splits = {s: (path / f"{s}.txt").read_text(encoding="utf-8").splitlines() for s in SPLITS}
        vocab = Vocab.load(path / "vocab.json")
    except (OSError, ValueError, KeyError) as e:
        log.warning("prepared data in %s is damaged (%s); rebuilding it", path, e)
        return None
    return Prepared(path, splits, vocab, meta)


def prepare(cfg: CorpusConfig, data_dir: str | Path) -> Prepared:
    """Prepared splits and vocabulary for ``cfg``, from the cache when it holds them."""
    data_dir = Path(data_dir)
    # The npm package is identified by its pinned integrity, so a warm start need not even open the tarball.
    files = [] if cfg.source == "npm" else source_files(cfg, data_dir)
    path = data_dir / "prepared" / f"{cfg.source}-{cache_key(cfg, files)}"
    if path.exists():
        cached = _load_cache(path)
        if cached is not None:
            log.info("using prepared data %s", path)
            return cached
        shutil.rmtree(path, ignore_errors=True)
    if cfg.source == "npm":
        files = source_files(cfg, data_dir)

    log.info("preparing %s into %s", cfg.source, path)
    splits, counts = clean(read_source(cfg, files), cfg)
    vocab = Vocab.build(splits["train"], cfg.min_freq)
    log.info("vocabulary: %d characters with frequency >= %d, plus 4 special tokens", len(vocab) - 4, cfg.min_freq)
    with atomic_dir(path) as tmp:
        for s in SPLITS:
            (tmp / f"{s}.txt").write_text("".join(b + "\n" for b in splits[s]), encoding="utf-8")
        vocab.save(tmp / "vocab.json")
        meta = {
            "prep_version": PREP_VERSION,
            "settings": asdict(cfg),
            "counts": counts,
            "vocab_size": len(vocab),
            "vocab_fingerprint": vocab.fingerprint,
            "sha256": {n: _sha256(tmp / n) for n in [f"{s}.txt" for s in SPLITS] + ["vocab.json"]},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2, default=list), encoding="utf-8")
    return Prepared(path, splits, vocab, meta)
