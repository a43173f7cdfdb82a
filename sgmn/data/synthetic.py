"""The built-in synthetic live-commerce data set, written in the LPR4M full-release layout.

Nobody should need 4 TB of real streams to see the system work, so this module draws small,
realistic-in-structure data: shops of procedurally drawn products (a category silhouette, a
colour, a pattern, an accent part and a logo glyph) with fine-grained siblings that differ in
exactly one attribute; live clips where the intended product moves large across a cluttered
studio while other products of the same shop stand in the background; salesperson ASR that
mentions some attributes between chit-chat. The output is read by ``sgmn.data.readers.lpr4m``
exactly like the real data set (spec: /work/shared/spec/synthetic.md).

Everything is drawn from numpy Generators seeded per item (``[seed, kind, room, item]``), so the
same seed and config give byte-identical annotation files and images.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter
from tqdm import tqdm

# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SynthConfig:
    rooms: int = 12
    products_per_room: int = 16
    clips_per_product: int = 3  # training clips per product
    test_clips_per_product: int = 1
    frames_per_clip: int = 10
    image_size: int = 128  # shop images and frames are square, this many pixels
    distractors: float = 0.5  # number and size of other shop products in the background
    domain_gap: float = 0.5  # strength of the stream-side changes (pose, light, blur, hand, exits)
    fine_grained: float = 0.5  # share of products that are one-attribute siblings of another
    asr_informativeness: float = 0.6  # chance that an ASR sentence is about the product
    asr_missing: float = 0.05  # share of clips without any ASR text
    seed: int = 0
    jpeg_quality: int = 90

    def __post_init__(self):
        for name in ("rooms", "products_per_room", "clips_per_product", "test_clips_per_product", "frames_per_clip"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"SynthConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.image_size < 32:
            raise ValueError(f"SynthConfig.image_size must be at least 32, got {self.image_size}")
        for name in ("distractors", "domain_gap", "fine_grained", "asr_informativeness", "asr_missing"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SynthConfig.{name} must be within 0..1, got {value}")


PRESETS: dict[str, SynthConfig] = {
    # Small, distinct products, strong ASR: a tiny model learns it within a CI budget.
    "easy": SynthConfig(rooms=4, products_per_room=8, clips_per_product=3, test_clips_per_product=1,
                        frames_per_clip=6, image_size=96, distractors=0.1, domain_gap=0.15,
                        fine_grained=0.0, asr_informativeness=0.9, asr_missing=0.0),
    "default": SynthConfig(),
    "hard": SynthConfig(rooms=12, products_per_room=16, clips_per_product=3, test_clips_per_product=1,
                        distractors=0.9, domain_gap=0.85, fine_grained=0.8, asr_informativeness=0.3,
                        asr_missing=0.15),
}


def preset(name: str, **overrides) -> SynthConfig:
    """A named preset with some fields replaced (``preset("easy", rooms=2, seed=3)``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown synthetic preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


# ---------------------------------------------------------------- vocabulary
CATEGORIES = ("bottle", "box", "shirt", "mug", "shoe", "bag", "hat", "phone")
ACCENT_PART = {"bottle": "cap", "box": "lid", "shirt": "collar", "mug": "handle",
               "shoe": "sole", "bag": "strap", "hat": "brim", "phone": "camera"}
COLOURS = {"red": (200, 40, 40), "orange": (235, 130, 30), "yellow": (235, 205, 40), "green": (60, 150, 60),
           "teal": (30, 140, 140), "blue": (40, 80, 200), "purple": (120, 60, 170), "pink": (235, 130, 170),
           "brown": (120, 75, 40), "black": (35, 35, 35)}
PATTERNS = {"plain": "plain", "stripes": "striped", "dots": "dotted", "checks": "checked", "diagonal": "diagonal-striped"}
ACCENTS = {"white": (245, 245, 245), "gold": (212, 175, 55), "silver": (165, 170, 178),
           "navy": (20, 30, 90), "mint": (150, 225, 190), "crimson": (150, 10, 40)}
LOGOS = ("star", "circle", "triangle", "square", "cross", "diamond")
ATTRIBUTES = ("category", "colour", "pattern", "accent", "logo")
SIBLING_ATTRIBUTES = ("colour", "pattern", "accent", "logo")  # siblings share the category
_CHOICES = {"category": CATEGORIES, "colour": tuple(COLOURS), "pattern": tuple(PATTERNS),
            "accent": tuple(ACCENTS), "logo": LOGOS}

# Every word that names a product attribute; chit-chat must use none of them.
ATTRIBUTE_WORDS = frozenset(
    w for words in (CATEGORIES, COLOURS, PATTERNS, PATTERNS.values(), ACCENTS, LOGOS, ACCENT_PART.values())
    for phrase in words for w in re.findall(r"[a-z]+", phrase)
)
CHIT_CHAT = (
    "welcome everyone, thanks for joining the live room",
    "remember to follow the shop for more deals",
    "link number {n} is ready, go grab it now",
    "we only have a few left in stock",
    "delivery is free for everyone today",
    "any questions, just type them in the comments",
    "this is one of our best sellers this month",
    "the quality is really good, trust me",
    "the price drops in {n} minutes, stay here",
    "hello to everyone who just came in",
    "my sister loves this one, she uses it every day",
    "tap the little cart to see the details",
)
INFORMATIVE = {
    "category": ("this {category} is very popular", "a great {category} for daily use",
                 "you need this {category} at home"),
    "colour": ("this one comes in {colour}", "look at this lovely {colour} colour", "the {colour} is so pretty"),
    "pattern": ("it has a {pattern} pattern", "see the {pattern} design up close"),
    "accent": ("look at the {accent} {part}", "it comes with a {accent} {part}"),
    "logo": ("there is a little {logo} logo on the front", "see the {logo} logo here"),
}

KIND_PRODUCT, KIND_CLIP, KIND_ROOM, KIND_SHOP_IMAGE = 1, 2, 3, 4


def _rng(seed: int, *item: int) -> np.random.Generator:
    return np.random.default_rng([seed, *item])


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


# ---------------------------------------------------------------- planning
@dataclass
class SynthProduct:
    product_id: str
    room_id: str
    attributes: dict[str, str]
    sibling_of: Optional[str] = None
    differs_in: Optional[str] = None

    @property
    def title(self) -> str:
        a = self.attributes
        return (f"{a['colour']} {PATTERNS[a['pattern']]} {a['category']} with {a['accent']} "
                f"{ACCENT_PART[a['category']]} and {a['logo']} logo")


@dataclass
class SynthClip:
    clip_id: str
    room_id: str
    product_id: str
    split: str
    index: int  # global clip number, seeds its drawing
    asr: str = ""
    distractor_ids: list[str] = field(default_factory=list)
    boxes: list[Optional[tuple[int, int, int, int]]] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)

    def frame_ids(self, n: int) -> list[str]:
        return [f"{self.clip_id}-{i:04d}" for i in range(n)]


def _plan_shop(config: SynthConfig, room_index: int, room_id: str) -> list[SynthProduct]:
    rng = _rng(config.seed, KIND_PRODUCT, room_index)
    n = config.products_per_room
    n_siblings = min(n - 1, int(round(config.fine_grained * n)))
    bases: list[dict[str, str]] = []
    for _ in range(n - n_siblings):
        # Base products keep apart (>= 3 differing attributes) where the draw allows it, so that
        # only the planned siblings are fine-grained.
        for attempt in range(200):
            attrs = {k: str(rng.choice(_CHOICES[k])) for k in ATTRIBUTES}
            need = 3 if attempt < 150 else 1
            if all(_distance(attrs, b) >= need for b in bases):
                break
        bases.append(attrs)
    products = [SynthProduct(_uuid(rng), room_id, attrs) for attrs in bases]
    taken = {tuple(p.attributes.values()) for p in products}
    while len(products) < n:
        base = products[int(rng.integers(len(bases)))]
        attribute = str(rng.choice(SIBLING_ATTRIBUTES))
        options = [v for v in _CHOICES[attribute] if v != base.attributes[attribute]]
        attrs = dict(base.attributes, **{attribute: str(rng.choice(options))})
        if tuple(attrs.values()) in taken:
            continue
        taken.add(tuple(attrs.values()))
        products.append(SynthProduct(_uuid(rng), room_id, attrs, sibling_of=base.product_id, differs_in=attribute))
    order = rng.permutation(n)  # siblings are not all at the end of the gallery
    return [products[i] for i in order]


def _distance(a: dict[str, str], b: dict[str, str]) -> int:
    return sum(a[k] != b[k] for k in ATTRIBUTES)


def _asr_text(config: SynthConfig, rng: np.random.Generator, product: SynthProduct) -> str:
    if rng.random() < config.asr_missing:
        return ""
    a = product.attributes
    words = {"category": a["category"], "colour": a["colour"], "pattern": PATTERNS[a["pattern"]],
             "accent": a["accent"], "part": ACCENT_PART[a["category"]], "logo": a["logo"]}
    chat = [CHIT_CHAT[i] for i in rng.permutation(len(CHIT_CHAT))]  # no sentence said twice
    sentences = []
    for _ in range(int(rng.integers(3, 6))):
        if rng.random() < config.asr_informativeness:
            attribute = str(rng.choice(ATTRIBUTES))
            template = str(rng.choice(INFORMATIVE[attribute]))
        else:
            template = chat.pop()
        sentences.append(template.format(n=int(rng.integers(1, 30)), **words))
    return ". ".join(sentences) + "."


# ---------------------------------------------------------------- drawing
def _scaled(size: int, *xy: float) -> list[float]:
    return [v * size for v in xy]


def _silhouette(category: str, size: int) -> tuple[Image.Image, Image.Image]:
    """(body mask, accent-part mask) of a category, drawn on a size x size canvas."""
    s = size
    body, accent = Image.new("L", (s, s), 0), Image.new("L", (s, s), 0)
    b, a = ImageDraw.Draw(body), ImageDraw.Draw(accent)
    P = lambda *xy: _scaled(s, *xy)  # noqa: E731  (unit square -> pixels)
    if category == "bottle":
        b.rounded_rectangle(P(.33, .36, .67, .94), radius=.08 * s, fill=255)
        b.rectangle(P(.43, .19, .57, .38), fill=255)
        a.rounded_rectangle(P(.40, .07, .60, .21), radius=.03 * s, fill=255)
    elif category == "box":
        b.rectangle(P(.14, .34, .86, .90), fill=255)
        a.rectangle(P(.10, .23, .90, .36), fill=255)
    elif category == "shirt":
        b.polygon([tuple(P(x, y)) for x, y in ((.3, .15), (.7, .15), (.93, .33), (.82, .46), (.72, .39),
                                               (.72, .9), (.28, .9), (.28, .39), (.18, .46), (.07, .33))], fill=255)
        a.polygon([tuple(P(x, y)) for x, y in ((.38, .13), (.62, .13), (.5, .3))], fill=255)
    elif category == "mug":
        b.rounded_rectangle(P(.16, .28, .66, .88), radius=.05 * s, fill=255)
        a.ellipse(P(.56, .40, .88, .76), outline=255, width=max(2, int(.07 * s)))
        a.rectangle(P(.16, .28, .66, .88), fill=0)
    elif category == "shoe":
        b.polygon([tuple(P(x, y)) for x, y in ((.08, .55), (.45, .5), (.52, .32), (.72, .3), (.93, .58),
                                               (.93, .74), (.08, .74))], fill=255)
        a.rectangle(P(.06, .72, .95, .83), fill=255)
    elif category == "bag":
        b.rounded_rectangle(P(.16, .42, .84, .9), radius=.06 * s, fill=255)
        a.arc(P(.3, .12, .7, .66), 180, 360, fill=255, width=max(2, int(.06 * s)))
    elif category == "hat":
        b.pieslice(P(.22, .2, .78, .84), 180, 360, fill=255)
        a.ellipse(P(.05, .47, .95, .63), fill=255)
    elif category == "phone":
        b.rounded_rectangle(P(.3, .08, .7, .92), radius=.06 * s, fill=255)
        a.ellipse(P(.44, .12, .56, .2), fill=255)
        a.rectangle(P(.4, .84, .6, .88), fill=255)
    else:
        raise ValueError(f"no silhouette for category {category!r}")
    return body, accent


def _pattern_layer(rgb: tuple[int, int, int], pattern: str, size: int) -> Image.Image:
    layer = Image.new("RGB", (size, size), rgb)
    if pattern == "plain":
        return layer
    light = sum(rgb) / 3 > 120
    ink = tuple(int(c * 0.45) for c in rgb) if light else tuple(int(c + (255 - c) * 0.6) for c in rgb)
    d = ImageDraw.Draw(layer)
    step = max(4, size // 8)
    if pattern == "stripes":
        for y in range(0, size, step):
            d.rectangle([0, y, size, y + step // 2 - 1], fill=ink)
    elif pattern == "dots":
        r = max(1, step // 4)
        for row, y in enumerate(range(step // 2, size, step)):
            for x in range(step // 2 + (row % 2) * step // 2, size, step):
                d.ellipse([x - r, y - r, x + r, y + r], fill=ink)
    elif pattern == "checks":
        for y in range(0, size, step):
            for x in range((y // step % 2) * step, size, 2 * step):
                d.rectangle([x, y, x + step - 1, y + step - 1], fill=ink)
    elif pattern == "diagonal":
        for x in range(-size, size, step):
            d.line([(x, size), (x + size, 0)], fill=ink, width=max(1, step // 3))
    return layer


def _draw_logo(draw: ImageDraw.ImageDraw, logo: str, cx: float, cy: float, r: float, fill) -> None:
    if logo == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        draw.polygon([(cx + q * np.cos(t), cy - q * np.sin(t)) for q, t in zip(radii, angles)], fill=fill)
    elif logo == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif logo == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * .8), (cx - r, cy + r * .8)], fill=fill)
    elif logo == "square":
        draw.rectangle([cx - r * .8, cy - r * .8, cx + r * .8, cy + r * .8], fill=fill)
    elif logo == "cross":
        w = r * 0.35
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    elif logo == "diamond":
        draw.polygon([(cx, cy - r), (cx + r * .75, cy), (cx, cy + r), (cx - r * .75, cy)], fill=fill)
    else:
        raise ValueError(f"no logo glyph {logo!r}")


def draw_product(attributes: dict[str, str], size: int) -> Image.Image:
    """The product alone as an RGBA sprite (transparent outside the silhouette)."""
    body, accent = _silhouette(attributes["category"], size)
    rgb = COLOURS[attributes["colour"]]
    sprite = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    sprite.paste(_pattern_layer(rgb, attributes["pattern"], size), mask=body)
    x1, y1, x2, y2 = body.getbbox()
    logo_ink = (250, 250, 250) if sum(rgb) / 3 < 110 else (25, 25, 25)
    # The logo sits on a plain badge so that it stays readable on any pattern.
    badge = ImageDraw.Draw(sprite)
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2 + 0.05 * (y2 - y1), 0.11 * size
    badge.ellipse([cx - r * 1.3, cy - r * 1.3, cx + r * 1.3, cy + r * 1.3], fill=rgb + (255,))
    _draw_logo(badge, attributes["logo"], cx, cy, r, logo_ink + (255,))
    sprite.paste(Image.new("RGBA", (size, size), ACCENTS[attributes["accent"]] + (255,)), mask=accent)
    outline = ImageChops.lighter(body, accent).filter(ImageFilter.FIND_EDGES)
    sprite.paste(Image.new("RGBA", (size, size), (30, 30, 30, 255)), mask=outline)
    return sprite


def draw_shop_image(sprite: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """A clean e-commerce shot: light plain background, product centred and large."""
    tone = int(rng.integers(236, 252))
    image = Image.new("RGB", (size, size), (tone, tone, tone))
    inner = int(size * 0.9)
    offset = (size - inner) // 2
    product = sprite.resize((inner, inner), Image.BILINEAR)
    image.paste(product, (offset, offset), product)
    return image


def _studio_background(size: int, rng: np.random.Generator) -> Image.Image:
    """A cluttered live-room backdrop: wall colour, shelves, random muted objects, soft focus."""
    wall = tuple(int(v) for v in rng.integers(90, 200, 3))
    image = Image.new("RGB", (size, size), wall)
    d = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(14, 24))):
        colour = tuple(int(v) for v in rng.integers(40, 220, 3))
        x, y = rng.integers(-size // 8, size, 2)
        w, h = rng.integers(size // 12, size // 3, 2)
        shape = rng.integers(3)
        box = [int(x), int(y), int(x + w), int(y + h)]
        if shape == 0:
            d.rectangle(box, fill=colour)
        elif shape == 1:
            d.ellipse(box, fill=colour)
        else:
            d.line([(int(x), int(y)), (int(x + w), int(y + h))], fill=colour, width=int(rng.integers(2, 6)))
    for y in rng.integers(size // 5, size, 2):  # shelves
        d.rectangle([0, int(y), size, int(y) + max(2, size // 40)], fill=tuple(int(c * 0.6) for c in wall))
    return image.filter(ImageFilter.GaussianBlur(1.2))


def _transform_sprite(sprite: Image.Image, side: int, angle: float, shear: float) -> Image.Image:
    """Scale the sprite to ``side`` pixels, shear it (a cheap perspective cue) and rotate it by
    ``angle`` degrees, in one affine resampling onto a canvas that holds the whole result."""
    t = np.deg2rad(angle)
    rotation = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    forward = (side / sprite.width) * rotation @ np.array([[1.0, shear], [0.0, 1.0]])
    half_in = np.array([sprite.width, sprite.height]) / 2
    corners = forward @ (np.array([[0, 0], [1, 0], [0, 1], [1, 1]]).T * 2 * half_in[:, None] - half_in[:, None])
    width, height = (np.ceil(corners.max(axis=1) - corners.min(axis=1)).astype(int) + 1).tolist()
    half_out = np.array([width, height]) / 2
    inverse = np.linalg.inv(forward)  # PIL maps output pixels back to input pixels
    shift = half_in - inverse @ half_out
    data = (inverse[0, 0], inverse[0, 1], shift[0], inverse[1, 0], inverse[1, 1], shift[1])
    return sprite.transform((width, height), Image.AFFINE, data, resample=Image.BILINEAR)


# Alpha above this counts as product when measuring its box (bilinear fringes do not).
_OPAQUE = [255 if a > 96 else 0 for a in range(256)]


def _relight(frame: Image.Image, gains: np.ndarray, offset: float) -> Image.Image:
    """Studio lighting: per-channel gain and a brightness offset (one lookup table per channel)."""
    levels = np.arange(256, dtype=np.float64)
    table = np.clip(np.outer(gains, levels) + offset, 0, 255).round().astype(np.uint8)
    return frame.point(table.ravel().tolist())


SKIN_TONES = ((224, 172, 140), (198, 134, 100), (141, 85, 60))


def _draw_hand(image: Image.Image, box: tuple[int, int, int, int], skin, grip: tuple[float, float], strength: float) -> None:
    """A salesperson's hand holding the product from below, covering part of it.

    ``grip`` (fractions of the box width and height from its bottom) stays fixed over a clip.
    """
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    r = max(3, int(max(w, h) * (0.12 + 0.1 * strength)))
    cx, cy = int(x1 + w * grip[0]), int(y2 - h * grip[1])
    d = ImageDraw.Draw(image)
    d.rectangle([cx - r // 2, cy, cx + r // 2, image.height], fill=tuple(int(c * 0.9) for c in skin))  # arm
    d.ellipse([cx - r, cy - r // 2, cx + r, cy + r // 2 + r // 3], fill=skin)  # palm
    for k in range(3):  # fingers over the product
        fx = cx - r + (k + 1) * r // 2
        d.rounded_rectangle([fx - r // 6, cy - r, fx + r // 6, cy], radius=max(1, r // 6), fill=skin)


def render_clip(
    config: SynthConfig,
    clip: SynthClip,
    sprites: dict[str, Image.Image],
    out_folder: Path,
) -> None:
    """Draw and save a clip's frames; fill ``clip.boxes`` and ``clip.attributes``."""
    s, g, n = config.image_size, config.domain_gap, config.frames_per_clip
    rng = _rng(config.seed, KIND_CLIP, clip.index)
    margin = s // 8
    backdrop = _studio_background(s + 2 * margin, rng)
    # Distractors: other products of the same shop standing in the background.
    for pid in clip.distractor_ids:
        side = int(s * rng.uniform(0.18, 0.22 + 0.25 * config.distractors))
        small = _transform_sprite(sprites[pid], side, float(rng.uniform(-15, 15)), 0.0)
        x = int(rng.integers(0, max(1, backdrop.width - small.width)))
        y = int(rng.integers(backdrop.height // 4, max(backdrop.height // 4 + 1, backdrop.height - small.height)))
        backdrop.paste(small, (x, y), small)

    # The intended product: a base size, a path across the frame and pose changes (domain gap).
    base_side = s * rng.uniform(0.45, 0.8)
    start, end = rng.uniform(0.35, 0.65, 2), rng.uniform(0.35, 0.65, 2)
    base_angle, angle_drift = rng.uniform(-25, 25) * g, rng.uniform(-10, 10) * g
    base_shear = rng.uniform(-0.25, 0.25) * g
    gains = 1 + rng.uniform(-0.25, 0.25, 3) * g
    light = rng.uniform(-25, 25) * g
    hand = rng.random() < 0.8 * g
    skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
    grip = (float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.0, 0.25 * g + 0.05)))
    # Visible duration: the product may enter late or leave early (never in fewer than half the frames).
    hidden = int(rng.integers(0, n // 2 + 1)) if rng.random() < 0.5 * g else 0
    hidden_at_start = int(rng.integers(hidden + 1))
    visible = [hidden_at_start <= i < n - (hidden - hidden_at_start) for i in range(n)]
    pan = rng.integers(0, 2 * margin + 1, 2)
    pan_to = rng.integers(0, 2 * margin + 1, 2)

    clip.boxes = []
    areas = []
    folder = out_folder / clip.clip_id
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame_id in enumerate(clip.frame_ids(n)):
        t = i / max(1, n - 1)
        px, py = (pan + (pan_to - pan) * t).astype(int)
        frame = backdrop.crop((int(px), int(py), int(px) + s, int(py) + s))
        box = None
        if visible[i]:
            side = max(8, int(base_side * (1 + rng.uniform(-0.15, 0.15) * g)))
            angle = base_angle + angle_drift * t + rng.uniform(-4, 4) * g
            sprite = _transform_sprite(sprites[clip.product_id], side, angle, base_shear * (1 - 0.5 * t))
            centre = (start + (end - start) * t + rng.uniform(-0.03, 0.03, 2)) * s
            x0, y0 = int(centre[0] - sprite.width / 2), int(centre[1] - sprite.height / 2)
            frame.paste(sprite, (x0, y0), sprite)
            bx1, by1, bx2, by2 = sprite.getchannel("A").point(_OPAQUE).getbbox()
            box = (max(0, x0 + bx1), max(0, y0 + by1), min(s, x0 + bx2), min(s, y0 + by2))
            if hand:
                _draw_hand(frame, box, skin, grip, g)
            areas.append((box[2] - box[0]) * (box[3] - box[1]) / (s * s))
        frame = _relight(frame, gains * (1 + rng.uniform(-0.05, 0.05) * g), light)
        if rng.random() < 0.5 * g:
            frame = frame.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.3 + 1.5 * g))))
        frame.save(folder / f"{frame_id}.jpg", quality=config.jpeg_quality)
        clip.boxes.append(box)

    mean_area = float(np.mean(areas)) if areas else 0.0
    shown = sum(visible) / n
    clip.attributes = {
        "scale": "small" if mean_area < 0.15 else "medium" if mean_area < 0.3 else "large",
        "duration": "long" if shown == 1 else "medium" if shown >= 0.7 else "short",
        "num_products": "multiple" if clip.distractor_ids else "single",
    }


# ---------------------------------------------------------------- writing
def generate(out_dir: Union[str, Path], config: Union[SynthConfig, str] = "default", *, progress: bool = True) -> dict:
    """Write a synthetic data set in the LPR4M full-release layout; return a summary dict.

    ``out_dir`` must not exist or be empty (mixing two sets would duplicate ids).
    """
    if isinstance(config, str):
        config = preset(config)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; synthetic data goes into a new folder")
    started = time.perf_counter()
    ann = out / "annotations"
    ann.mkdir(parents=True, exist_ok=True)

    rooms: list[tuple[str, list[SynthProduct]]] = []
    clips: list[SynthClip] = []
    for r in range(config.rooms):
        room_rng = _rng(config.seed, KIND_ROOM, r)
        room_id = _uuid(room_rng)
        products = _plan_shop(config, r, room_id)
        rooms.append((room_id, products))
        clips.extend(_plan_room_clips(config, room_rng, room_id, products, first_index=len(clips)))

    sprites: dict[str, Image.Image] = {}
    (out / "shop_images").mkdir(exist_ok=True)
    for r, (room_id, products) in enumerate(rooms):
        for k, p in enumerate(products):
            sprites[p.product_id] = draw_product(p.attributes, config.image_size)
            shop = draw_shop_image(sprites[p.product_id], config.image_size, _rng(config.seed, KIND_SHOP_IMAGE, r, k))
            shop.save(out / "shop_images" / f"{p.product_id}.jpg", quality=config.jpeg_quality)

    for clip in tqdm(clips, desc="drawing synthetic clips", unit=" clips", disable=not progress or None):
        render_clip(config, clip, sprites, out / f"{clip.split}_frames")

    _write_annotations(ann, config, rooms, clips)
    products = [p for _, ps in rooms for p in ps]
    (out / "synth_meta.json").write_text(json.dumps({
        "generator": "sgmn.data.synthetic",
        "config": asdict(config),
        "products": {p.product_id: {"room_id": p.room_id, "attributes": p.attributes, "title": p.title,
                                    "sibling_of": p.sibling_of, "differs_in": p.differs_in} for p in products},
        # what each clip shows (the annotations only say what is sold): for checks and debugging
        "clips": {c.clip_id: {"product_id": c.product_id, "distractor_ids": c.distractor_ids} for c in clips},
    }, indent=1) + "\n", encoding="utf-8")
    split_counts = {split: sum(c.split == split for c in clips) for split in ("train", "test")}
    return {
        "out_dir": str(out),
        "rooms": len(rooms),
        "products": len(products),
        "siblings": sum(p.sibling_of is not None for p in products),
        "train_clips": split_counts["train"],
        "test_clips": split_counts["test"],
        "frames": len(clips) * config.frames_per_clip,
        "clips_with_asr": sum(bool(c.asr) for c in clips),
        "seconds": round(time.perf_counter() - started, 2),
        "config": asdict(config),
    }


def _plan_room_clips(config: SynthConfig, rng: np.random.Generator, room_id: str,
                     products: list[SynthProduct], first_index: int) -> list[SynthClip]:
    """Clips of one room's stream, in stream order, with unique ``<live_id>-<start>-<end>`` ids."""
    jobs = [(p, split) for p in products
            for split in ["train"] * config.clips_per_product + ["test"] * config.test_clips_per_product]
    jobs = [jobs[i] for i in rng.permutation(len(jobs))]
    cursor = int(rng.integers(0, 600_000))
    clips = []
    for k, (product, split) in enumerate(jobs):
        # Training frames are sampled at 1 fps, test frames one per 3 s (as in LPR4M).
        length = config.frames_per_clip * (1000 if split == "train" else 3000)
        clip_rng = _rng(config.seed, KIND_CLIP, first_index + k, 1)
        others = [p.product_id for p in products if p.product_id != product.product_id]
        n_distractors = min(len(others), int(clip_rng.binomial(4, config.distractors)))
        distractors = [others[i] for i in clip_rng.choice(len(others), n_distractors, replace=False)] if n_distractors else []
        clips.append(SynthClip(
            clip_id=f"{room_id}-{cursor}-{cursor + length}",
            room_id=room_id,
            product_id=product.product_id,
            split=split,
            index=first_index + k,
            asr=_asr_text(config, clip_rng, product),
            distractor_ids=distractors,
        ))
        cursor += length + int(rng.integers(1000, 60_000))
    return clips


def _box_list(box: Optional[tuple[int, int, int, int]]) -> list[int]:
    return list(box) if box is not None else [0, 0, 0, 0]  # the sources' "no box"


def _write_annotations(ann: Path, config: SynthConfig, rooms, clips: list[SynthClip]) -> None:
    products = {p.product_id: p for _, ps in rooms for p in ps}
    n = config.frames_per_clip
    train = [c for c in clips if c.split == "train"]
    test = [c for c in clips if c.split == "test"]

    rows = []
    for c in train:
        p = products[c.product_id]
        category = p.attributes["category"]
        rows.append("\t".join([
            c.clip_id,
            repr(c.frame_ids(n)),  # Python literal, as the published tooling writes
            json.dumps([_box_list(b) for b in c.boxes]),
            p.product_id, p.title, str(CATEGORIES.index(category)), category, c.asr,
            c.attributes["scale"], c.attributes["duration"], c.attributes["num_products"],
        ]))
    _write_text(ann / f"training_videoinfo_full_{len(rows)}.txt", rows)

    _write_text(ann / f"test_videoid_asr_{len(test)}.txt", [f"{c.clip_id}\t{c.asr}" for c in test])
    gallery = {room_id: [p.product_id for p in ps] for room_id, ps in rooms}
    titles = [f"{pid}\t{products[pid].title}" for ids in gallery.values() for pid in ids]
    _write_text(ann / f"test_image_title_{len(titles)}.txt", titles)
    _write_json(ann / f"test_videoid_to_gtimage_{len(test)}.json", {c.clip_id: [c.product_id] for c in test})
    frame_boxes = {fid: _box_list(b) for c in test for fid, b in zip(c.frame_ids(n), c.boxes)}
    _write_json(ann / f"test_frameid2gtbox_{len(frame_boxes)}.json", frame_boxes)
    _write_json(ann / f"test_liveid_to_gallery_{len(gallery)}.json", gallery)
    attributes = []
    for c in test:
        category = products[c.product_id].attributes["category"]
        attributes.append("\t".join([c.clip_id, str(CATEGORIES.index(category)), category, c.attributes["scale"],
                                     c.attributes["duration"], c.attributes["num_products"]]))
    _write_text(ann / f"test_videoid_attributes_{len(attributes)}.txt", attributes)


def _write_text(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False) + "\n", encoding="utf-8")
