"""`sgmn serve`: the retrieval service and its web page (uvicorn)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

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
        token_file: Optional[Path] = typer.Option(
            None, "--token-file", help="file holding a bearer token clients must send (or set $SGMN_TOKEN)"
        ),
        auth: str = typer.Option("writes", "--auth", help="with a token: 'writes' or 'all' requests need it"),
        allow_host: Optional[list[str]] = typer.Option(
            None, "--allow-host", help="accepted Host header (repeatable; default: loopback names when "
            "bound to loopback, any otherwise); '*.example.com' allowed"
        ),
        allow_origin: Optional[list[str]] = typer.Option(
            None, "--allow-origin", help="another site allowed to POST/DELETE, e.g. https://ops.example.com (repeatable)"
        ),
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
        from sgmn.serve.security import is_loopback

        if not checkpoint.exists():
            _fail(f"--checkpoint {checkpoint} does not exist")
        if auth not in ("writes", "all"):
            _fail(f"--auth must be 'writes' or 'all', got {auth!r}")
        token = _read_token(token_file)
        for pattern in allow_host or []:
            if "*" in pattern[1:] or (pattern.startswith("*") and not pattern.startswith("*.") and pattern != "*"):
                _fail(f"--allow-host {pattern!r}: a wildcard may only start a pattern, as in '*.example.com'")
        try:
            retriever = Retriever.open(store, model=checkpoint)
        except SGMNError as err:  # a locked or corrupt store, an unreadable checkpoint
            _fail(str(err))
        with retriever:
            try:
                retriever.check_model()  # a store indexed by another model: say so now, not at the first query
            except SGMNError as err:
                _fail(str(err))
            settings = ServeSettings(
                max_upload_mb=max_upload_mb, token=token, auth=auth, bind_host=host,
                allowed_hosts=list(allow_host) if allow_host else None, allowed_origins=list(allow_origin or []),
            )
            if token is None and not is_loopback(host):
                typer.echo("sgmn serve: warning: listening beyond this machine without a token; anyone who "
                           "can reach it can add and delete products (see --token-file)", err=True)
            if workers == 1:
                application = create_app(retriever, settings)
                typer.echo(f"sgmn serve: http://{host}:{port}/  (API docs at /docs, store {store})")
                uvicorn.run(application, host=host, port=port, log_level="info")
                return
            if retriever.store.backend == "milvus" and retriever.store.server is None:
                _fail("a Milvus Lite store (.db) admits one process: use --workers 1, a FAISS store "
                      "folder, or a Milvus server (--store http://host:19530?root=FOLDER)")
        # checked and closed here: each worker process opens the store itself (sgmn.serve.workers)
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


def _read_token(token_file: Optional[Path]) -> Optional[str]:
    """The bearer token, from a file (never the command line, which other users can read)."""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            _fail(f"--token-file {token_file}: cannot read it ({err})")
        if not token:
            _fail(f"--token-file {token_file} is empty")
        return token
    token = os.environ.get("SGMN_TOKEN", "").strip()
    return token or None
