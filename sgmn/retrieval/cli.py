"""`sgmn index` (a shop folder, or every room of a data set, into a store) and `sgmn query`."""

from __future__ import annotations

import json
import shutil
import textwrap
from collections import Counter
from pathlib import Path
from typing import Optional

import typer


def _fail(err: BaseException) -> None:
    from sgmn.errors import exit_with

    message = err.message if hasattr(err, "message") else str(err)
    exit_with(" ".join(message.split()))


def _open(store: str, checkpoint: Optional[Path], device: Optional[str], read_only: bool = False):
    from sgmn.retrieval import Retriever

    if checkpoint is not None and not checkpoint.exists():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such file or folder")
    retriever = Retriever.open(store, model=checkpoint, create=not read_only, read_only=read_only)
    if device:
        retriever.model.to(device)
    return retriever


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="product", leave=False, dynamic_ncols=True)


def _rooms_of(dataset, room: Optional[str], split: Optional[str]) -> list[str]:
    """The rooms to index: one (--room), those with clips in --split, or all, in id order."""
    from sgmn.errors import UsageError

    if room is not None:
        if room not in dataset.rooms:
            known = sorted(dataset.rooms)
            raise UsageError(f"--room {room!r} is not a room of the data set ({len(known)} rooms, e.g. {known[:5]})")
        return [room]
    if split is not None:
        if split not in dataset.splits:
            raise UsageError(f"--split {split!r} is not a split of the data set (has: {sorted(dataset.splits)})")
        in_split = {dataset.clips[c].room_id for c in dataset.splits[split]}
        return sorted(r for r in dataset.rooms if r in in_split)
    return sorted(dataset.rooms)


def _index_room(retriever, room: str, products, on_error: str, prune: bool):
    bar = _progress(len(products), f"room {room}")
    try:
        report = retriever.add_products(room, products, replace=True, on_error=on_error, create_room=True,
                                        progress=bar.update)
    finally:
        bar.close()
    removed = []
    if prune:
        keep = {p.product_id for p in products}
        for record in retriever.list_products(room):
            if record.product_id not in keep:
                retriever.remove_product(room, record.product_id)
                removed.append(record.product_id)
    total = len(retriever.list_products(room))
    typer.echo(
        f"room {room}: {len(report.added)} added, {len(report.updated)} updated, "
        f"{len(removed)} removed, {len(report.skipped_products)} skipped; {total} product(s) in the room"
    )
    for line in report.skipped_products:
        typer.echo(f"  skipped product: {line}")
    for line in report.skipped_images:
        typer.echo(f"  skipped image: {line}")
    return report


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
        data: Optional[Path] = typer.Option(
            None, "--data", help="A data set root: index every room with its gallery and titles (with --format)."
        ),
        format: str = typer.Option("lpr4m", "--format", help="Layout of --data: lpr4m, lpr750k, sgmn, movingfashion, folders."),
        split: Optional[str] = typer.Option(None, "--split", help="With --data: only the rooms that have clips in this split."),
        room: Optional[str] = typer.Option(
            None, "--room", help="Room id ([A-Za-z0-9._-]). Required with --shop; with --data: index only this room."
        ),
        shop: Optional[Path] = typer.Option(None, "--shop", help="Shop folder of ONE room: <id>.jpg or <id>/*.jpg per product."),
        titles: Optional[Path] = typer.Option(None, "--titles", help="With --shop: titles file (id<TAB>title or JSON)."),
        prune: bool = typer.Option(False, "--prune", help="Also remove room products that are not in the shop / gallery."),
        on_error: str = typer.Option("skip", "--on-error", help="skip (report bad images/ids by name) | raise"),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default cpu)"),
    ):
        """Create or update rooms of a gallery store: one room from a shop folder (--shop, --room),
        or every room of a data set with its gallery and titles (--data, --format)."""
        from sgmn.data.readers import READERS, enclosing_dataset
        from sgmn.errors import SGMNError, exit_with
        from sgmn.retrieval import ModelMismatch

        if (shop is None) == (data is None):
            exit_with("give either --shop DIR --room R (one room) or --data ROOT --format F (every room of a data set)")
        if on_error not in ("skip", "raise"):
            exit_with(f"--on-error {on_error!r} is not one of skip, raise")
        if shop is not None:
            if room is None:
                exit_with("--shop needs --room R: a shop folder is the gallery of one room")
            found = enclosing_dataset(shop) if shop.is_dir() else None
            if found is not None:
                root, fmt = found
                exit_with(
                    f"--shop {shop} is inside a {fmt} data set at {root}, whose products belong to several rooms; "
                    f"index them room by room with `sgmn index --data {root} --format {fmt}` (add --room R for one room)"
                )
        elif format not in READERS:
            exit_with(f"--format {format!r} is not one of {', '.join(READERS)}")
        if titles is not None and shop is None:
            exit_with("--titles goes with --shop; with --data the titles come from the data set")

        unsupported: Counter = Counter()
        skipped_products = 0
        try:
            if shop is not None:
                from sgmn.data.readers.folders import read_shop

                jobs = [(room, read_shop(shop, titles, skipped=unsupported))]
            else:
                from sgmn.data.readers import read_dataset

                dataset = read_dataset(data, format, on_error=on_error)
                jobs = [(r, dataset.room_gallery(r)) for r in _rooms_of(dataset, room, split)]
                if dataset.skipped:
                    typer.echo(f"skipped while reading the data set: {json.dumps(dict(dataset.skipped))}")
                if not jobs:
                    exit_with(f"no room to index in {data}")
            with _open(store, checkpoint, device) as retriever:
                try:
                    retriever.check_model()
                except ModelMismatch:
                    n = retriever.reindex()
                    typer.echo(f"re-indexed {n} stored product(s) with this model")
                indexed = 0
                for room_id, products in jobs:
                    report = _index_room(retriever, room_id, products, on_error, prune)
                    indexed += len(report.added) + len(report.updated)
                    skipped_products += len(report.skipped_products)
        except (SGMNError, KeyError, ValueError, FileNotFoundError) as err:
            _fail(err)
        if len(jobs) > 1:
            typer.echo(f"{len(jobs)} rooms: {indexed} product(s) indexed, {skipped_products} skipped; store {store}")
        if unsupported:
            typer.echo(f"  files that are not images (not read): {sum(unsupported.values())}")
        if any(products for _, products in jobs) and indexed == 0:
            exit_with("no product could be indexed")

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
        as_json: bool = typer.Option(False, "--json", help="Print JSON (the schema of the HTTP API's query answer)."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default cpu)"),
    ):
        """Rank the products of a room for one clip."""
        from sgmn.data.readers.folders import read_clip
        from sgmn.errors import SGMNError
        from sgmn.retrieval.schema import query_response

        from sgmn.retrieval.backend import is_local_store

        if is_local_store(store) and not Path(store).is_dir():
            _fail(FileNotFoundError(f"store {store} does not exist (run `sgmn index` first)"))
        try:
            record = read_clip(clip, asr)
            source = record.video_path if record.video_path is not None else record.frame_paths
            with _open(store, checkpoint, device, read_only=True) as retriever:
                result = retriever.query(room, source, asr=record.asr, top_k=top_k)
                model_name = str(getattr(retriever.model.config, "name", type(retriever.model).__name__))
        except (SGMNError, KeyError, ValueError, FileNotFoundError) as err:
            _fail(err)
        response = query_response(result, room, model_name, image_url=lambda hit: Path(hit.image_path).resolve().as_uri())
        if as_json:
            typer.echo(json.dumps(response.model_dump(), ensure_ascii=False, indent=2))
            return
        typer.echo(f"room {room}, clip {clip}, {len(result.frames)} frame(s), ASR: {result.asr or '(none)'}")
        typer.echo(format_hits(result.hits))


def format_hits(hits, width: Optional[int] = None) -> str:
    """The ranking as a table whose columns fit the longest id; titles are never cut: a long title
    wraps inside its column (siblings often differ only at the end of their titles)."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    ids = [h.product_id for h in hits]
    id_w = max([len("product"), *map(len, ids)])
    fixed = 4 + 2 + 8 + 2 + id_w + 2  # rank, score, product and the gaps
    title_w = max(24, min(max([len("title"), *(len(h.title or "") for h in hits)]), width - fixed - 24))
    lines = [f"{'rank':>4}  {'score':>8}  {'product':<{id_w}}  {'title':<{title_w}}  image"]
    for rank, hit in enumerate(hits, 1):
        parts = textwrap.wrap(hit.title or "", title_w, break_long_words=True) or [""]
        lines.append(f"{rank:>4}  {hit.score:8.4f}  {hit.product_id:<{id_w}}  {parts[0]:<{title_w}}  {hit.image_path}")
        lines += [f"{'':>{fixed}}{part}" for part in parts[1:]]
    return "\n".join(lines)
