"""Several serving processes over one store: the app factory each worker process calls.

``sgmn serve --workers N`` hands uvicorn this factory (uvicorn starts worker processes by import
string, so the checkpoint, store and settings travel in environment variables). Each worker
opens its own :class:`~sgmn.retrieval.Retriever` on the same store: queries run in parallel in
every worker, writes are serialised by the store's write lock (across processes), and every
acknowledged write is committed before its response is sent. gunicorn runs the same factory::

    SGMN_CHECKPOINT=runs/demo SGMN_STORE=store \\
    gunicorn -k uvicorn.workers.UvicornWorker -w 4 -b 127.0.0.1:8000 'sgmn.serve.workers:create_app_from_env()'

A Milvus Lite store (a ``.db`` path) admits one process; several workers need a FAISS store
folder or a Milvus server (``http://host:19530?root=FOLDER``).
"""

from __future__ import annotations

import json
import os
from contextlib import asynccontextmanager
from dataclasses import asdict, fields

ENV_CHECKPOINT = "SGMN_CHECKPOINT"
ENV_STORE = "SGMN_STORE"
ENV_SETTINGS = "SGMN_SERVE_SETTINGS"  # JSON of ServeSettings fields (optional)


def settings_to_env(settings) -> str:
    return json.dumps(asdict(settings))


def create_app_from_env():
    """The FastAPI app of one worker process (see the module docstring)."""
    from sgmn.retrieval import Retriever
    from sgmn.serve.app import ServeSettings, create_app

    checkpoint, store = os.environ.get(ENV_CHECKPOINT), os.environ.get(ENV_STORE)
    if not checkpoint or not store:
        raise RuntimeError(f"set {ENV_CHECKPOINT} and {ENV_STORE} to start a serving worker")
    known = {f.name for f in fields(ServeSettings)}
    given = json.loads(os.environ.get(ENV_SETTINGS) or "{}")
    settings = ServeSettings(**{k: v for k, v in given.items() if k in known})
    retriever = Retriever.open(store, model=checkpoint)
    retriever.check_model()
    app = create_app(retriever, settings)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application):
        async with inner(application) as state:
            yield state
        retriever.close()

    app.router.lifespan_context = lifespan

    @app.middleware("http")
    async def name_the_worker(request, call_next):  # which process answered (logs, tests)
        response = await call_next(request)
        response.headers["X-SGMN-Worker"] = str(os.getpid())
        return response

    return app
