"""`sgmn serve`: the retrieval service and its web page (uvicorn)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        checkpoint: Path = typer.Option(..., "--checkpoint", help="run folder, saved model folder or published .bin"),
        store: Path = typer.Option(..., "--store", help="gallery store folder (created when missing)"),
        host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0 exposes it to the network)"),
        port: int = typer.Option(8000, "--port", min=1, max=65535),
        max_upload_mb: float = typer.Option(50.0, "--max-upload-mb", min=0.001, help="largest request body accepted"),
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
            application = create_app(retriever, ServeSettings(max_upload_mb=max_upload_mb))
            typer.echo(f"sgmn serve: http://{host}:{port}/  (API docs at /docs, store {store})")
            uvicorn.run(application, host=host, port=port, log_level="info")


def _fail(message: str) -> None:
    typer.echo(f"sgmn serve: error: {message}", err=True)
    raise typer.Exit(2)
