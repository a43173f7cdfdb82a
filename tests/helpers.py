"""Small media writers shared by the tests (each test builds its own frame contents)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import av
import numpy as np


def write_mp4(path, frames: Sequence[np.ndarray], rate: int = 8, codec: str = "mpeg4",
              options: Optional[dict] = None, gop: Optional[int] = None) -> Path:
    """Encode HxWx3 uint8 ``frames`` into a real video file with PyAV (``gop``: keyframe interval;
    frame i gets pts i, so its index can be read back from the timestamps)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        if options:
            stream.options = options
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, dtype=np.uint8), format="rgb24")
            if gop is not None:
                video_frame.pts = i
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
