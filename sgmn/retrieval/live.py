"""Live feed: frames and ASR text arrive as a stream; every N frames, the current top-k.

This is the evaluation protocol's *frame mode* served online: each prediction uses a causal
window of the last ``window`` (≤ 10) frames and the ASR heard while those frames were shown,
and nothing pushed afterwards. An ASR chunk belongs to the latest frame pushed before it (the
first frame if it came before any frame) and leaves the window with that frame.

    session = LiveSession(retriever, "live-1", every_n_frames=5)
    for frame in camera:
        session.push_asr(asr_chunk)            # whenever the speech recogniser emits text
        update = session.push_frame(frame)     # None, or a LiveUpdate every 5 frames
        if update: show(update.hits)
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

from sgmn.retrieval.errors import NotFound
from sgmn.retrieval.retriever import Hit, QueryResult, Retriever


@dataclass(frozen=True)
class LiveUpdate:
    frame_index: int  # the newest frame in the window (0-based position in the stream)
    window_start: int  # the oldest frame in the window
    asr: Optional[str]  # the ASR heard in the window (chunks joined by spaces), None if none
    result: QueryResult

    @property
    def hits(self) -> list[Hit]:
        return self.result.hits

    def to_dict(self) -> dict:
        return {"frame_index": self.frame_index, "window_start": self.window_start, **self.result.to_dict()}


class LiveSession:
    """One live stream of one room (see the module docstring)."""

    def __init__(
        self,
        retriever: Retriever,
        room: str,
        every_n_frames: int = 5,
        window: int = 10,
        top_k: int = 5,
    ):
        if every_n_frames < 1 or window < 1 or top_k < 1:
            raise ValueError(
                f"every_n_frames, window and top_k must be >= 1, got {every_n_frames}, {window}, {top_k}"
            )
        if not retriever.store.has_room(room):
            raise NotFound(f"unknown room {room!r} in store {retriever.store.root}")
        self.retriever = retriever
        self.room = room
        self.every_n_frames = every_n_frames
        self.window = window
        self.top_k = top_k
        self._frames: deque[tuple[int, Any]] = deque(maxlen=window)  # (position, frame)
        self._asr: deque[tuple[int, str]] = deque()  # (position of its frame, text)
        self._pushed = 0
        self._lock = threading.Lock()

    @property
    def frames_pushed(self) -> int:
        return self._pushed

    def push_asr(self, text_chunk: str) -> None:
        """Text the speech recogniser produced since the last call (empty text is ignored)."""
        if not isinstance(text_chunk, str):
            raise TypeError(f"ASR chunk must be a string, got {type(text_chunk).__name__}")
        if text_chunk.strip():
            with self._lock:
                self._asr.append((max(self._pushed - 1, 0), text_chunk.strip()))

    def push_frame(self, frame) -> Optional[LiveUpdate]:
        """Add a frame (PIL image, HxWx3 uint8 array or image path); every ``every_n_frames``
        frames, returns the ranking of the current window, else None."""
        with self._lock:
            self._frames.append((self._pushed, frame))
            self._pushed += 1
            start = self._frames[0][0]
            while self._asr and self._asr[0][0] < start:
                self._asr.popleft()
            if self._pushed % self.every_n_frames:
                return None
            frames, asr, newest = self._snapshot()
        return self._rank(frames, asr, newest, start)

    def current(self) -> LiveUpdate:
        """The ranking of the current window now (at least one frame must have been pushed)."""
        with self._lock:
            if not self._frames:
                raise ValueError("no frame pushed yet")
            frames, asr, newest = self._snapshot()
            start = self._frames[0][0]
        return self._rank(frames, asr, newest, start)

    def feed(self, frames: Iterable[Any]) -> Iterator[LiveUpdate]:
        """Push every frame of an iterable, yielding the updates as they are due."""
        for frame in frames:
            update = self.push_frame(frame)
            if update is not None:
                yield update

    def _snapshot(self):
        frames = [f for _, f in self._frames]
        asr = " ".join(t for _, t in self._asr) or None
        return frames, asr, self._frames[-1][0]

    def _rank(self, frames, asr, newest: int, start: int) -> LiveUpdate:
        result = self.retriever.query(self.room, frames, asr=asr, top_k=self.top_k)
        # query() reports indices within the window; make them stream positions
        result.frame_indices = [start + i for i in result.frame_indices]
        return LiveUpdate(frame_index=newest, window_start=start, asr=asr, result=result)
