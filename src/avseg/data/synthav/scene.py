"""The SynthAV scene model: shape classes, colours, trajectories, who sounds when, and the renderer.

A scene is ``T`` one-second steps (one frame per second, as in AVSBench and Ref-AVSBench) of 1-4 coloured shapes
moving smoothly over a textured, low-contrast background. Each shape class has its own sound (see
:mod:`avseg.data.synthav.audio`); in each second a subset of the objects sounds, each at its own loudness, and a
sounding object pulses faintly (a few percent of scale and brightness, in step with its loudness) so that the
soundtrack, not the pulse, is the strong cue for who sounds.

Everything about video ``index`` is drawn from ``np.random.default_rng([seed, index])`` in a fixed order (the
soundtrack's noise floor and the choice of expressions use the sibling streams ``[seed, index, 1]`` and
``[seed, index, 2]``), and its split comes from ``index`` alone (:func:`split_for_index`), so a video does not depend
on how many videos are generated nor on the order in which worker processes make them. Extra training videos
(``avseg data synth --extra-train-videos``) are drawn the same way with their split set to ``train``.

Rules that keep the expressions answerable (see :mod:`avseg.data.synthav.expressions`):

- Only objects whose class is unique in the scene ever sound ("voiced" objects), so the sound of a class names one
  object; a class appears twice only with two different colours, and both copies stay silent.
- The held-out class (:data:`HELD_OUT_CLASS`) appears exactly once in every ``test_u`` video and in no other video.
- Objects are placed so that their paths rarely overlap; when they do, the object drawn later (higher ``fid``) hides
  the earlier one and masks keep only the visible pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "CLASSES",
    "COLOURS",
    "HELD_OUT_CLASS",
    "SEEN_CLASSES",
    "SPLITS",
    "Scene",
    "SceneObject",
    "ShapeClass",
    "Split",
    "class_index",
    "generate_scene",
    "render_scene",
    "shape_mask",
    "split_for_index",
    "video_id",
]

Split = Literal["train", "val", "test_s", "test_u", "test_n"]
SPLITS: tuple[str, ...] = ("train", "val", "test_s", "test_u", "test_n")

# Split of video ``index`` is _SPLIT_CYCLE[index % 10]: 60% train and 10% each for the others, and the first five
# videos cover all five splits, so any N >= 5 has every split. Depending on the index only keeps a video's content
# (which needs its split: test_u scenes hold the held-out class) independent of N.
_SPLIT_CYCLE: tuple[str, ...] = ("train", "val", "test_s", "test_u", "test_n") + ("train",) * 5


@dataclass(frozen=True)
class ShapeClass:
    """One object class: its shape, its sound, and how that sound is described in the manifest.

    Attributes:
        name: class name used in expressions, uids and ``label2idx.json`` (no underscores: Ref-AVS uids are split
            on ``_``).
        sound: key of the timbre in :data:`avseg.data.synthav.audio.SOUNDS`.
        extent: how far the shape reaches from its centre, in units of the object radius (for spacing).
    """

    name: str
    sound: str
    extent: float


# Label indices follow this order (background 0, then 1..K). The last entry is the held-out class.
CLASSES: tuple[ShapeClass, ...] = (
    ShapeClass("circle", "low_buzz", 1.0),
    ShapeClass("square", "mid_reed", 1.2),
    ShapeClass("triangle", "high_whistle", 1.2),
    ShapeClass("star", "rising_chirp", 1.15),
    ShapeClass("cross", "noise_bursts", 1.1),
    ShapeClass("diamond", "high_hiss", 1.1),
    ShapeClass("heart", "bell", 1.1),
)
HELD_OUT_CLASS = "heart"
SEEN_CLASSES: tuple[str, ...] = tuple(c.name for c in CLASSES if c.name != HELD_OUT_CLASS)

# Saturated colours on a desaturated background give the strong colour contrast a tiny model needs.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 225),
    "yellow": (240, 210, 30),
    "purple": (145, 50, 195),
    "orange": (245, 130, 20),
    "cyan": (20, 200, 215),
}

_CLASS_BY_NAME = {c.name: c for c in CLASSES}

# Scene statistics (fractions of the frame side unless stated).
_NUM_OBJECTS_P = (0.1, 0.3, 0.35, 0.25)  # P(1), P(2), P(3), P(4) objects
_DUPLICATE_CLASS_P = 0.2  # chance that a scene with >= 2 objects shows one class twice (two colours)
_RADIUS_RANGE = (0.075, 0.15)  # object radius: 15-30% of the side as diameter
_AMPLITUDE_MAX = 0.12  # sinusoidal motion amplitude per axis
_PERIOD_RANGE = (8.0, 20.0)  # seconds per motion cycle: a step of at most ~9% of the side per frame
_GAIN_LEVELS = (0.3, 0.55, 1.0)  # base loudness of a voiced object
_SOUND_ON_P = 0.65  # after its first sounding second, a voiced object sounds in each later second with this chance
_PULSE_SCALE = 0.06  # a sounding object grows by up to 6% ...
_PULSE_BRIGHTNESS = 0.04  # ... and brightens by up to 4%, in step with its loudness
_HELD_OUT_VOICED_P = 0.75  # chance that the held-out object of a test_u scene is voiced


def class_index(name: str) -> int:
    """Label index of a class (1..K; 0 is background), as written to ``label2idx.json``."""
    for i, c in enumerate(CLASSES):
        if c.name == name:
            return i + 1
    raise ValueError(f"unknown SynthAV class {name!r}; known: {[c.name for c in CLASSES]}")


def split_for_index(index: int) -> str:
    """The split of video ``index`` (a fixed cycle of 10: 6 train, then 1 each of val/test_s/test_u/test_n)."""
    if index < 0:
        raise ValueError(f"video index must be >= 0, got {index}")
    return _SPLIT_CYCLE[index % len(_SPLIT_CYCLE)]


def video_id(index: int) -> str:
    """The video id of video ``index`` (``synth00012``; no underscores, so Ref-AVS uids split cleanly)."""
    return f"synth{index:05d}"


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene.

    Attributes:
        fid: object index in the scene (z-order: higher is drawn on top); Ref-AVS ``fid``.
        cls: class name.
        colour: colour name (a key of :data:`COLOURS`).
        radius: radius in pixels at rest.
        rotation: fixed in-plane rotation in radians (small, so a square never turns into a diamond).
        centres: ``(T, 2)`` float centre ``(x, y)`` in pixels, one row per frame.
        loudness: ``(T,)`` float loudness per second in ``[0, 1]``; 0 means silent in that second.
        sound_seed: seed of this object's timbre details (phase, slight pitch jitter).
    """

    fid: int
    cls: str
    colour: str
    radius: float
    rotation: float
    centres: np.ndarray
    loudness: np.ndarray
    sound_seed: int

    @property
    def sounding(self) -> np.ndarray:
        """``(T,)`` bool: does the object sound in each second?"""
        return self.loudness > 0

    @property
    def voiced(self) -> bool:
        """Does the object sound in at least one second?"""
        return bool(self.sounding.any())

    @property
    def extent(self) -> float:
        return _CLASS_BY_NAME[self.cls].extent


@dataclass(frozen=True)
class Scene:
    """One generated video: its identity, background and objects. Rendering is :func:`render_scene`.

    Attributes:
        index: video index; ``vid`` is :func:`video_id` of it.
        seed: generator seed.
        split: one of :data:`SPLITS`.
        size: frame side in pixels (frames are square).
        num_frames: ``T`` (seconds, one frame per second).
        objects: the objects, in z-order.
        background: ``(size, size, 3)`` uint8 textured background.
    """

    index: int
    seed: int
    split: str
    size: int
    num_frames: int
    objects: tuple[SceneObject, ...]
    background: np.ndarray

    @property
    def vid(self) -> str:
        return video_id(self.index)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted base colour with low-frequency blotches, faint stripes and grain (lower contrast than any object)."""
    hue = rng.uniform(0, 2 * math.pi)
    base = 125 + 18 * np.array([math.cos(hue), math.cos(hue - 2.1), math.cos(hue + 2.1)])
    coarse = rng.normal(0.0, 1.0, size=(6, 6, 3))
    # Bilinear upsampling of a small random grid gives smooth blotches without any image library.
    pos = np.linspace(0, coarse.shape[0] - 1, size)
    i0 = np.clip(np.floor(pos).astype(int), 0, coarse.shape[0] - 2)
    f = (pos - i0)[:, None]
    rows = coarse[i0] * (1 - f)[..., None] + coarse[i0 + 1] * f[..., None]  # (size, 6, 3)
    cols = rows[:, i0] * (1 - f.T)[..., None] + rows[:, i0 + 1] * f.T[..., None]  # (size, size, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    angle = rng.uniform(0, math.pi)
    stripes = np.sin(2 * math.pi * 7 * (xx * math.cos(angle) + yy * math.sin(angle)))[..., None]
    grain = rng.normal(0.0, 4.0, size=(size, size, 3))
    image = base + 14 * cols + 7 * stripes + grain
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _trajectories(
    rng: np.random.Generator, size: int, num_frames: int, radii: list[float], extents: list[float]
) -> list[np.ndarray]:
    """Smooth sinusoidal paths, re-drawn until no two objects come close (a bounded number of tries)."""
    t = np.arange(num_frames, dtype=np.float64)
    paths: list[np.ndarray] = []
    for r, ext in zip(radii, extents):
        reach = r * ext * (1 + _PULSE_SCALE)
        best, best_gap = None, -np.inf
        for _ in range(60):
            amp = rng.uniform(0, _AMPLITUDE_MAX * size, size=2)
            amp = np.minimum(amp, np.maximum(size / 2 - reach - 1, 0))
            lo, hi = reach + amp, size - reach - amp
            centre = rng.uniform(lo, np.maximum(hi, lo + 1e-6))
            period = rng.uniform(*_PERIOD_RANGE, size=2)
            phase = rng.uniform(0, 2 * math.pi, size=2)
            path = centre + amp * np.sin(2 * math.pi * t[:, None] / period + phase)  # (T, 2)
            # Smallest clearance to any earlier object over all frames (negative means overlap).
            gap = min(
                (
                    float(np.min(np.linalg.norm(path - other, axis=1))) - (reach + r2 * e2 * (1 + _PULSE_SCALE))
                    for other, r2, e2 in zip(paths, radii, extents)
                ),
                default=np.inf,
            )
            if gap > best_gap:
                best, best_gap = path, gap
            if gap >= 0.02 * size:
                break
        paths.append(best)  # type: ignore[arg-type]
    return paths


def _loudness(rng: np.random.Generator, num_frames: int, voiced: bool) -> np.ndarray:
    """Per-second loudness of one object: zeros if silent, else sounding from a random first second on."""
    out = np.zeros(num_frames, dtype=np.float64)
    if not voiced:
        return out
    gain = float(rng.choice(_GAIN_LEVELS))
    first = int(rng.integers(0, max(num_frames - 1, 1)))
    on = rng.random(num_frames) < _SOUND_ON_P
    on[:first] = False
    on[first] = True
    if num_frames >= 2 and on.sum() < 2:
        on[min(first + 1, num_frames - 1)] = True
    out[on] = gain * rng.uniform(0.85, 1.0, size=int(on.sum()))
    return out


def generate_scene(
    seed: int, index: int, *, size: int = 224, num_frames: int = 10, split: Split | None = None
) -> Scene:
    """Draw video ``index`` of the benchmark generated with ``seed``.

    Args:
        seed: generator seed.
        index: video index.
        size: frame side in pixels.
        num_frames: ``T``, seconds and frames of the clip.
        split: the video's split; None: :func:`split_for_index` (``"train"`` for an extra training video, whose
            index lies past the cycled ones).

    Returns:
        The scene; the same arguments always give the same scene.
    """
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([seed, index])
    split = split_for_index(index) if split is None else split
    n = int(rng.choice(4, p=_NUM_OBJECTS_P)) + 1
    # Classes: distinct by default; the held-out class exactly once in test_u; optionally one class twice.
    pool = list(SEEN_CLASSES)
    classes: list[str] = [HELD_OUT_CLASS] if split == "test_u" else []
    classes += [str(c) for c in rng.choice(pool, size=n - len(classes), replace=False)]
    if n >= 2 and rng.random() < _DUPLICATE_CLASS_P:
        seen_here = [c for c in classes if c != HELD_OUT_CLASS]
        classes[-1] = str(rng.choice(seen_here[:-1] if len(seen_here) > 1 else seen_here))
    order = rng.permutation(n)
    classes = [classes[i] for i in order]
    # Colours may repeat across classes (it makes "the red object" ambiguous sometimes), never within a class.
    colours: list[str] = []
    for c in classes:
        taken = {col for cls, col in zip(classes, colours) if cls == c}
        choices = [name for name in COLOURS if name not in taken]
        colours.append(str(rng.choice(choices)))
    radii = [float(rng.uniform(*_RADIUS_RANGE) * size) for _ in range(n)]
    extents = [_CLASS_BY_NAME[c].extent for c in classes]
    paths = _trajectories(rng, size, num_frames, radii, extents)
    rotations = rng.uniform(-0.2, 0.2, size=n)
    # Voiced objects: a random subset of those whose class is unique in the scene.
    unique = [i for i, c in enumerate(classes) if classes.count(c) == 1]
    num_voiced = int(rng.choice(len(unique) + 1, p=_voiced_count_p(len(unique))))
    ranked = [int(i) for i in rng.permutation(unique)]
    if split == "test_u" and rng.random() < _HELD_OUT_VOICED_P:
        # test_u is about the unseen class, its sound included: usually let the held-out object be among the voiced.
        held = classes.index(HELD_OUT_CLASS)
        ranked = [held] + [i for i in ranked if i != held]
        num_voiced = max(num_voiced, 1)
    voiced = set(ranked[:num_voiced])
    objects = []
    for i in range(n):
        objects.append(
            SceneObject(
                fid=i,
                cls=classes[i],
                colour=colours[i],
                radius=radii[i],
                rotation=float(rotations[i]),
                centres=paths[i],
                loudness=_loudness(rng, num_frames, i in voiced),
                sound_seed=int(rng.integers(0, 2**31 - 1)),
            )
        )
    background = _background(rng, size)
    return Scene(index, seed, split, size, num_frames, tuple(objects), background)


def _voiced_count_p(num_unique: int) -> np.ndarray:
    """Chance of 0..num_unique voiced objects: rarely none, most often one or two."""
    weights = np.array([0.5, *[3.0, 3.0, 1.5, 1.0][:num_unique]], dtype=np.float64)
    return weights / weights.sum()


def shape_mask(cls: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of a class's shape in object coordinates.

    Args:
        cls: class name.
        u, v: arrays of the same shape: coordinates in units of the object radius, ``v`` pointing up.

    Returns:
        Bool array of the same shape.
    """
    if cls == "circle":
        return u * u + v * v <= 1.0
    if cls == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if cls == "diamond":
        return np.abs(u) + np.abs(v) <= 1.1
    if cls == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.36) & (av <= 1.05)) | ((av <= 0.36) & (au <= 1.05))
    if cls == "triangle":
        # Equilateral, pointing up, circumradius 1.2: inside all three edges (inradius 0.6).
        inside = np.ones(u.shape, dtype=bool)
        for angle in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6):
            inside &= u * math.cos(angle) + v * math.sin(angle) <= 0.6
        return inside
    if cls == "star":
        return _star(u, v, outer=1.15, inner=0.5, points=5)
    if cls == "heart":
        x, y = u * 1.05, v * 1.05 + 0.1
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    raise ValueError(f"unknown SynthAV class {cls!r}")


def _star(u: np.ndarray, v: np.ndarray, *, outer: float, inner: float, points: int) -> np.ndarray:
    """A regular star polygon pointing up: fold the angle onto one half-spike, then test against its edge."""
    half = math.pi / points
    angle = np.arctan2(v, u) - math.pi / 2
    alpha = np.abs((angle + half) % (2 * half) - half)  # angle from the nearest spike tip, in [0, half]
    rho = np.hypot(u, v)
    # Edge from the tip (outer, 0) to the notch (inner*cos(half), inner*sin(half)): inside iff n.p <= n.tip.
    tip = np.array([outer, 0.0])
    notch = np.array([inner * math.cos(half), inner * math.sin(half)])
    edge = notch - tip
    normal = np.array([edge[1], -edge[0]])
    normal /= np.linalg.norm(normal)
    if normal @ tip < 0:
        normal = -normal
    return rho * (normal[0] * np.cos(alpha) + normal[1] * np.sin(alpha)) <= normal @ tip


def _object_pixels(obj: SceneObject, t: int, size: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """The bounding box of ``obj`` in frame ``t`` and its full (unoccluded) mask inside that box."""
    scale = 1 + _PULSE_SCALE * float(obj.loudness[t])
    r = obj.radius * scale
    cx, cy = obj.centres[t]
    reach = r * obj.extent + 2
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, size)
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, size)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dx, dy = (xx + 0.5 - cx) / r, -(yy + 0.5 - cy) / r
    c, s = math.cos(obj.rotation), math.sin(obj.rotation)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (slice(y0, y1), slice(x0, x1)), shape_mask(obj.cls, u, v)


def render_scene(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Render every frame and the object label map.

    Args:
        scene: the scene.

    Returns:
        ``frames`` uint8 ``(T, S, S, 3)`` RGB, and ``labels`` uint8 ``(T, S, S)`` where 0 is background and ``fid + 1``
        marks the visible pixels of object ``fid`` (later objects hide earlier ones).
    """
    size, t_count = scene.size, scene.num_frames
    frames = np.repeat(scene.background[None].astype(np.float64), t_count, axis=0)
    labels = np.zeros((t_count, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    for obj in scene.objects:
        colour = np.array(COLOURS[obj.colour], dtype=np.float64)
        for t in range(t_count):
            box, inside = _object_pixels(obj, t, size)
            cx, cy = obj.centres[t]
            # A soft light from the top-left and the loudness-driven brightening make the objects look solid.
            shade = 1 + 0.12 * ((cx - xx[box]) + (cy - yy[box])) / (2 * obj.radius)
            shade = shade * (1 + _PULSE_BRIGHTNESS * float(obj.loudness[t]))
            pixels = np.clip(colour * shade[..., None], 0, 255)
            region = frames[t][box]
            region[inside] = pixels[inside]
            labels[t][box][inside] = obj.fid + 1
    return np.round(frames).astype(np.uint8), labels
