"""Deployable retrieval: a persistent gallery store, exact / FAISS search, live-feed sessions.

See :class:`Retriever` (the API the server and the CLI use) and :class:`LiveSession`.
"""

from sgmn.retrieval.errors import AlreadyExists, InvalidId, ModelMismatch, NoModel, NotFound, StoreCorrupt, validate_id
from sgmn.retrieval.index import IndexConfig, VectorIndex
from sgmn.retrieval.live import LiveSession, LiveUpdate
from sgmn.retrieval.retriever import KEEP, AddReport, Hit, QueryResult, Retriever, RetrieverConfig, model_fingerprint
from sgmn.retrieval.store import GalleryStore, ProductRecord

__all__ = [
    "KEEP",
    "LiveSession",
    "LiveUpdate",
    "AddReport",
    "AlreadyExists",
    "GalleryStore",
    "Hit",
    "IndexConfig",
    "InvalidId",
    "ModelMismatch",
    "NoModel",
    "NotFound",
    "ProductRecord",
    "QueryResult",
    "Retriever",
    "RetrieverConfig",
    "StoreCorrupt",
    "VectorIndex",
    "model_fingerprint",
    "validate_id",
]
