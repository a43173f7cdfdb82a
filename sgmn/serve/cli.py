"""`sgmn serve`: the retrieval service and its web page (uvicorn)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        checkpoint: Path = typer.Option(..., "--checkpoint", help="run folder, saved model folder or published .bin"),
        store: str = typer.Option(
            ..., "--store",
            help="gallery store: a folder (FAISS, created when missing), a .db path (Milvus Lite) or "
            "http://host:19530?root=FOLDER (a Milvus server)",
        ),
        host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0 exposes it to the network)"),
        port: int = typer.Option(8000, "--port", min=1, max=65535),
        max_upload_mb: float = typer.Option(50.0, "--max-upload-mb", min=0.001, help="largest request body accepted"),
        workers: int = typer.Option(
            1, "--workers", min=1,
            help="serving processes over the one store (reads in parallel, writes serialised); "
            "a Milvus Lite .db store admits one",
        ),
    ) -> None:
        """Serve rooms, products and queries over HTTP, with a web page at http://HOST:PORT/."""
        import uvicorn

        from sgmn.errors import SGMNError
        from sgmn.retrieval import Retriever
        from sgmn.serve.app import ServeSettings, create_app

        if not checkpoint.exists():
            _fail(f"--checkpoint {checkpoint} does not exist")
        try:
            retriever = Retriever.open(store, model=checkpoint)
        except SGMNError as err:  # a locked or corrupt store, an unreadable checkpoint
            _fail(str(err))
        with retriever:
            try:
                retriever.check_model()  # a store indexed by another model: say so now, not at the first query
            except SGMNError as err:
                _fail(str(err))
            settings = ServeSettings(max_upload_mb=max_upload_mb)
            if workers == 1:
                application = create_app(retriever, settings)
                typer.echo(f"sgmn serve: http://{host}:{port}/  (API docs at /docs, store {store})")
                uvicorn.run(application, host=host, port=port, log_level="info")
                return
            if retriever.store.backend == "milvus" and retriever.store.server is None:
                _fail("a Milvus Lite store (.db) admits one process: use --workers 1, a FAISS store "
                      "folder, or a Milvus server (--store http://host:19530?root=FOLDER)")
        # checked and closed here: each worker process opens the store itself (sgmn.serve.workers)
        import os

        from sgmn.serve import workers as serve_workers

        os.environ[serve_workers.ENV_CHECKPOINT] = str(checkpoint.resolve())
        os.environ[serve_workers.ENV_STORE] = store
        os.environ[serve_workers.ENV_SETTINGS] = serve_workers.settings_to_env(settings)
        typer.echo(f"sgmn serve: http://{host}:{port}/  ({workers} workers, API docs at /docs, store {store})")
        uvicorn.run("sgmn.serve.workers:create_app_from_env", factory=True, host=host, port=port,
                    workers=workers, log_level="info")


def _fail(message: str) -> None:
    typer.echo(f"sgmn serve: error: {message}", err=True)
    raise typer.Exit(2)
