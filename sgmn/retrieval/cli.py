"""`sgmn index` (a shop folder into a store room) and `sgmn query` (a clip against a room)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional

import typer


def _fail(err: BaseException) -> None:
    message = err.message if hasattr(err, "message") else str(err)
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def _open(store: str, checkpoint: Optional[Path], device: Optional[str], read_only: bool = False):
    from sgmn.retrieval import Retriever

    retriever = Retriever.open(store, model=checkpoint, create=not read_only, read_only=read_only)
    if device:
        retriever.model.to(device)
    return retriever


def register(app: typer.Typer) -> None:
    @app.command("index")
    def index_command(
        checkpoint: Optional[Path] = typer.Option(
            None, "--checkpoint", help="Run folder, saved model folder or published .bin (default: the store's own)"
        ),
        store: str = typer.Option(
            ..., "--store",
            help="Store: a folder (FAISS, created if missing), a .db path (Milvus Lite) or "
            "http://host:19530?root=FOLDER (a Milvus server).",
        ),
        room: str = typer.Option(..., "--room", help="Room id ([A-Za-z0-9._-]); created if missing."),
        shop: Path = typer.Option(..., "--shop", help="Shop folder: <id>.jpg or <id>/*.jpg per product."),
        titles: Optional[Path] = typer.Option(None, "--titles", help="Titles file (id<TAB>title or JSON)."),
        prune: bool = typer.Option(False, "--prune", help="Also remove room products that are not in the shop folder."),
        on_error: str = typer.Option("skip", "--on-error", help="skip (report bad images/ids by name) | raise"),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default cpu)"),
    ):
        """Create or update a room of a gallery store from a plain shop folder."""
        from sgmn.data.readers.folders import read_shop
        from sgmn.errors import SGMNError
        from sgmn.retrieval import ModelMismatch

        try:
            unsupported: Counter = Counter()
            products = read_shop(shop, titles, skipped=unsupported)
            with _open(store, checkpoint, device) as retriever:
                try:
                    retriever.check_model()
                except ModelMismatch:
                    n = retriever.reindex()
                    typer.echo(f"re-indexed {n} stored product(s) with this model")
                report = retriever.add_products(room, products, replace=True, on_error=on_error, create_room=True)
                removed = []
                if prune:
                    keep = {p.product_id for p in products}
                    for record in retriever.list_products(room):
                        if record.product_id not in keep:
                            retriever.remove_product(room, record.product_id)
                            removed.append(record.product_id)
                total = len(retriever.list_products(room))
        except (SGMNError, KeyError, ValueError) as err:
            _fail(err)
        typer.echo(
            f"room {room}: {len(report.added)} added, {len(report.updated)} updated, "
            f"{len(removed)} removed, {len(report.skipped_products)} skipped; {total} product(s) in the room"
        )
        for line in report.skipped_products:
            typer.echo(f"  skipped product: {line}")
        for line in report.skipped_images:
            typer.echo(f"  skipped image: {line}")
        if unsupported:
            typer.echo(f"  files that are not images (not read): {sum(unsupported.values())}")
        if products and not report.added and not report.updated:
            typer.echo("error: no product could be indexed", err=True)
            raise typer.Exit(code=1)

    @app.command("query")
    def query_command(
        checkpoint: Optional[Path] = typer.Option(
            None, "--checkpoint", help="Run folder, saved model folder or published .bin (default: the store's own)"
        ),
        store: str = typer.Option(
            ..., "--store", help="Store made by `sgmn index` (opened read-only: works beside `sgmn serve`)."
        ),
        room: str = typer.Option(..., "--room", help="Room to search."),
        clip: Path = typer.Option(..., "--clip", help="A video file or a folder of frames."),
        asr: Optional[str] = typer.Option(
            None, "--asr", help="ASR text (default: <clip>.txt beside it or asr.txt in the frame folder)."
        ),
        top_k: int = typer.Option(10, "--top-k", min=1),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default cpu)"),
    ):
        """Rank the products of a room for one clip."""
        from sgmn.data.readers.folders import read_clip
        from sgmn.errors import SGMNError

        from sgmn.retrieval.backend import is_local_store

        if is_local_store(store) and not Path(store).is_dir():
            _fail(FileNotFoundError(f"store {store} does not exist (run `sgmn index` first)"))
        try:
            record = read_clip(clip, asr)
            source = record.video_path if record.video_path is not None else record.frame_paths
            with _open(store, checkpoint, device, read_only=True) as retriever:
                result = retriever.query(room, source, asr=record.asr, top_k=top_k)
        except (SGMNError, KeyError, ValueError) as err:
            _fail(err)
        if as_json:
            typer.echo(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
            return
        typer.echo(f"room {room}, clip {clip}, {len(result.frames)} frame(s), ASR: {result.asr or '(none)'}")
        typer.echo(f"{'rank':>4}  {'score':>8}  {'product':<24} {'title':<32} image")
        for rank, hit in enumerate(result.hits, 1):
            title = (hit.title or "")[:32]
            typer.echo(f"{rank:>4}  {hit.score:8.4f}  {hit.product_id:<24} {title:<32} {hit.image_path}")
