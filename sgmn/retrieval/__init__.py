"""Deployable retrieval: a persistent gallery store, exact / FAISS search, live-feed sessions.

See :class:`Retriever` (the API the server and the CLI use) and :class:`LiveSession`.
Names are imported on first use, so that ``sgmn --help`` and other commands do not pay for
torch and FAISS until they need them.
"""

import importlib

_EXPORTS = {
    "sgmn.retrieval.backend": ["RetrievalBackend", "open_store"],
    "sgmn.retrieval.errors": ["AlreadyExists", "InvalidId", "ModelMismatch", "NoModel", "NotFound", "ReadOnlyStore",
                              "StoreBusy", "StoreCorrupt", "validate_id"],
    "sgmn.retrieval.index": ["IndexConfig", "VectorIndex"],
    "sgmn.retrieval.live": ["LiveSession", "LiveUpdate"],
    "sgmn.retrieval.milvus": ["MilvusStore"],
    "sgmn.retrieval.retriever": ["KEEP", "AddReport", "Hit", "QueryResult", "Retriever", "RetrieverConfig",
                                 "model_fingerprint"],
    "sgmn.retrieval.store": ["GalleryStore", "ProductRecord"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module 'sgmn.retrieval' has no attribute {name!r}")
