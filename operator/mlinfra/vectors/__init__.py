"""VectorIndex's ML layer: Qdrant collections behind aliases (:mod:`.collection`, :mod:`.rebuild`) and the
PostgreSQL -> Qdrant sync (:mod:`.sync`). Independent of Kopf: the handlers call in, never the other way."""
