"""The one JSON shape of a query answer, shared by ``sgmn query --json`` and ``POST /rooms/{room}/query``.

Both build a :class:`QueryResponse` with :func:`query_response`; they differ only in how an image
is addressed (``image_url``: an HTTP path from the server, a ``file://`` URI from the CLI) and in
whether frame thumbnails are embedded (the server sends JPEG / PNG data URLs for its web page; the
CLI leaves ``image`` and ``heatmap`` null and gives the raw attention only).
"""

from __future__ import annotations

from typing import Callable, Optional

from pydantic import BaseModel, Field


class HitInfo(BaseModel):
    rank: int = Field(description="1 = best", examples=[1])
    product_id: str = Field(examples=["p0042"])
    title: Optional[str] = Field(description="the product's title, in full", examples=["striped ceramic mug, blue"])
    score: float = Field(description="the model's score v·p + λ·a·t (higher is better)", examples=[0.8731])
    image_url: str = Field(
        description="the product's main image: an HTTP path (server) or a file:// URI (CLI)",
        examples=["/rooms/live-1/products/p0042/image"],
    )


class FrameView(BaseModel):
    index: int = Field(description="position of the frame in the clip / frame list", examples=[0])
    width: int = Field(description="width of `image` (server) or of the decoded frame (CLI)", examples=[256])
    height: int = Field(examples=[144])
    image: Optional[str] = Field(None, description="the sampled frame as a JPEG data URL (server only)")
    heatmap: Optional[str] = Field(
        None, description="text-guided attention as an RGBA PNG data URL of the frame's size (server only)"
    )
    attention: Optional[list[list[float]]] = Field(
        None, description="the raw (g, g) text-guided attention map; null for models without it"
    )


class QueryResponse(BaseModel):
    room_id: str = Field(examples=["live-1"])
    asr: Optional[str] = Field(description="the ASR text used (null: none)", examples=["this blue striped mug ..."])
    model: str = Field(description="name of the model that ranked", examples=["sgmn-tiny"])
    hits: list[HitInfo]
    frames: list[FrameView]


def query_response(
    result,
    room: str,
    model_name: str,
    image_url: Callable[[object], str],
    frame_view: Optional[Callable[[int, object, Optional[object]], FrameView]] = None,
) -> QueryResponse:
    """``result``: a :class:`sgmn.retrieval.QueryResult`. ``image_url(hit)`` addresses a hit's image;
    ``frame_view(index, frame, attention)`` renders a frame (default: size + raw attention only)."""

    def plain_view(index: int, frame, attention) -> FrameView:
        return FrameView(
            index=index, width=int(frame.shape[1]), height=int(frame.shape[0]),
            attention=None if attention is None else attention.tolist(),
        )

    render = frame_view or plain_view
    hits = [
        HitInfo(rank=i + 1, product_id=h.product_id, title=h.title, score=h.score, image_url=image_url(h))
        for i, h in enumerate(result.hits)
    ]
    frames = [
        render(int(index), frame, None if result.attention is None else result.attention[t])
        for t, (frame, index) in enumerate(zip(result.frames, result.frame_indices))
    ]
    return QueryResponse(room_id=room, asr=result.asr, model=model_name, hits=hits, frames=frames)
