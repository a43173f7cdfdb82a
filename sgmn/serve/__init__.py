"""The web service: ``create_app(retriever, settings)`` and ``sgmn serve``.

Imported lazily so that ``sgmn --help`` does not pay for FastAPI and torch.
"""

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str):
    if name in __all__:
        from sgmn.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'sgmn.serve' has no attribute {name!r}")
