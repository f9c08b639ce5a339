"""Pathfinder pictures: the settings (sizes, difficulties), their pixel geometry
(``pathfinder_geometry``), and the drawing of contours and markers (``_draw``); the rules the
pictures follow are in ``pathfinder.py``'s docstring."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DIFFICULTIES",
    "MARKER_LEVEL",
    "SIZES",
    "STROKE_LEVEL",
    "PathfinderGeometry",
    "pathfinder_geometry",
]

# difficulty -> (official folder, paddles per contour, base number of distractor contours)
DIFFICULTIES = {
    "easy": ("curv_baseline", 6, 3),
    "medium": ("curv_contour_length_9", 9, 3),
    "hard": ("curv_contour_length_14", 14, 2),
}
SIZES = (32, 64, 128, 256)
MARKER_LEVEL = 255
STROKE_LEVEL = 200
MAX_TURN = math.radians(30)


@dataclass(frozen=True)
class PathfinderGeometry:
    """Sizes in pixels of one Pathfinder setting (see the module docstring)."""

    size: int
    contour_length: int
    n_distractors: int
    distractor_length: int
    paddle_px: float
    gap_px: float
    stroke_radius_px: float
    marker_radius_px: float
    link_px: float
    min_sep_px: float
    marker_sep_px: float


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_size(size) -> None:
    if isinstance(size, bool) or size not in SIZES:
        raise ValueError(f"size: expected one of 32, 64, 128, 256 (the official sizes), got {size!r}")


def pathfinder_geometry(size: int = 32, difficulty: str = "hard") -> PathfinderGeometry:
    """The pixel geometry of ``size`` (32, 64, 128 or 256) and ``difficulty``."""
    _check_size(size)
    _check_choice("difficulty", difficulty, tuple(DIFFICULTIES))
    _, length, base = DIFFICULTIES[difficulty]
    s = size / 32
    gap, radius, marker = s, 0.55 * math.sqrt(s), 1.5 * s**0.75
    # ink reaches `radius` past a paddle's ends; + 2.3 covers the pixel grid's rounding (measured)
    link = max(gap - 2 * radius, 0.0) + 2.3
    return PathfinderGeometry(
        size=size,
        contour_length=length,
        n_distractors=round(base * math.sqrt(s)),
        distractor_length=length // 2,
        paddle_px=1.25 * s,
        gap_px=gap,
        stroke_radius_px=radius,
        marker_radius_px=marker,
        link_px=link,
        min_sep_px=link + 2 * radius + 0.1,
        marker_sep_px=link + radius + marker + 0.1,
    )


# ---------------------------------------------------------------- drawing


def _dist(pts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(P,)`` distances from the points ``(P, 2)`` to the nearest of the segments ``a[s] -> b[s]``."""
    if len(a) == 0:
        return np.full(len(pts), np.inf)
    ab = b - a
    ap = pts[:, None, :] - a[None]
    h = np.clip((ap * ab).sum(-1) / (ab * ab).sum(-1), 0.0, 1.0)
    d = ap - h[..., None] * ab
    return np.sqrt((d * d).sum(-1).min(1))


class _Scene:
    """Contours placed so far (their whole centrelines, gaps included) and the marker centres."""

    def __init__(self, geom: PathfinderGeometry, rng: np.random.Generator):
        self.g, self.rng = geom, rng
        self.step = 0.25 * math.sqrt(geom.size / 32)  # spacing of the samples checked on a new contour
        self.lo = geom.stroke_radius_px + 0.5  # centrelines stay in [lo, size - lo]
        self.a = self.b = np.zeros((0, 2))
        self.markers = np.zeros((0, 2))

    def _samples(self, joints: np.ndarray) -> np.ndarray:
        k = math.ceil((self.g.paddle_px + self.g.gap_px) / self.step)
        t = np.arange(k)[:, None] / k
        inner = joints[:-1, None, :] + t[None] * (joints[1:] - joints[:-1])[:, None, :]
        return np.concatenate([inner.reshape(-1, 2), joints[-1:]])

    def shape(self, n: int) -> np.ndarray | None:
        """Joints ``(n + 1, 2)`` of a contour of ``n`` paddles starting at the origin, heading along
        +x, turning smoothly (or None when it comes back near itself)."""
        g, rng = self.g, self.rng
        turns = np.empty(n)
        turn = 0.0
        for i, u in enumerate(rng.uniform(-MAX_TURN, MAX_TURN, n).tolist()):
            turn = turns[i] = min(max(0.5 * turn + u, -MAX_TURN), MAX_TURN)
        theta = np.cumsum(turns)
        steps = (g.paddle_px + g.gap_px) * np.stack([np.cos(theta), np.sin(theta)], 1)
        joints = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, 0)])
        # joints more than 2 marker separations apart along the contour stay a marker separation apart
        lag = math.ceil(2 * g.marker_sep_px / (g.paddle_px + g.gap_px))
        if n >= lag:
            d2 = ((joints[:, None] - joints[None]) ** 2).sum(-1)
            if any(d2.diagonal(k).min() < g.marker_sep_px**2 for k in range(lag, n + 1)):
                return None
        return joints

    def fit(self, joints: np.ndarray, marked: tuple[int, ...], tries: int = 6) -> np.ndarray | None:
        """``joints`` rotated and moved to a random place inside the picture where it keeps clear of
        the scene (and the ends ``marked`` (0 / -1) keep clear as markers), or None. Tries
        ``tries`` rotations at once."""
        g, rng, size, r = self.g, self.rng, self.g.size, self.g.marker_radius_px
        sep, mark_sep = g.min_sep_px + self.step / 2, g.marker_sep_px + self.step / 2
        phi = rng.uniform(0, 2 * math.pi, tries)
        cos, sin = np.cos(phi)[:, None], np.sin(phi)[:, None]
        rot = np.stack([joints[:, 0] * cos - joints[:, 1] * sin, joints[:, 0] * sin + joints[:, 1] * cos], -1)
        lo = self.lo - rot.min(1)
        hi = size - self.lo - rot.max(1)
        placed = rot + (lo + rng.uniform(size=(tries, 2)) * (hi - lo))[:, None]
        ends = placed[:, list(marked)]
        ok = (lo <= hi).all(1) & (ends >= r).all((1, 2)) & (ends <= size - r).all((1, 2))
        # the joints first (cheap, catches most clashes), then samples along the whole contour
        ok &= _dist(placed.reshape(-1, 2), self.a, self.b).reshape(tries, -1).min(1) >= sep
        if marked:
            ok &= _dist(ends.reshape(-1, 2), self.a, self.b).reshape(tries, -1).min(1) >= g.marker_sep_px
        for t in np.flatnonzero(ok):
            centres = np.concatenate([self.markers, ends[t]])
            d2 = ((centres[:, None] - centres[None]) ** 2).sum(-1) + np.diag(np.full(len(centres), np.inf))
            if len(centres) > 1 and d2.min() < (2 * r + g.link_px + 0.1) ** 2:
                continue  # the markers' ink stays apart too
            pts = self._samples(placed[t])
            if _dist(pts, self.a, self.b).min() < sep:
                continue
            if len(self.markers) and ((pts[:, None] - self.markers[None]) ** 2).sum(-1).min() < mark_sep**2:
                continue
            return placed[t]
        return None

    def add(self, joints: np.ndarray, marked: tuple[int, ...] = ()) -> None:
        self.a = np.concatenate([self.a, joints[:-1]])
        self.b = np.concatenate([self.b, joints[1:]])
        self.markers = np.concatenate([self.markers, joints[list(marked)]])


def _place(geom: PathfinderGeometry, label: int, rng: np.random.Generator, tries: int = 20):
    """``(contours, markers)``: joint arrays (the two long contours first, then the distractors that
    fitted, up to ``n_distractors``) and the two marker centres; None when the long ones did not fit."""
    scene = _Scene(geom, rng)
    # label 1: markers on both ends of contour A; label 0: on one end of A and one end of B
    ends = [(0, -1), ()] if label == 1 else [(0,), (0,)]
    contours = []
    for i, n in enumerate([geom.contour_length] * 2 + [geom.distractor_length] * geom.n_distractors):
        marked = ends[i] if i < 2 else ()
        for _ in range(tries):
            shape = scene.shape(n)
            placed = None if shape is None else scene.fit(shape, marked)
            if placed is not None:
                scene.add(placed, marked)
                contours.append(placed)
                break
        else:
            if i < 2:
                return None
    return contours, scene.markers


def _ink(canvas: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float, level: int) -> None:
    """Paint the segment ``a -> b`` (x, y; a point when ``a == b``) with round caps: ``level`` up to
    ``radius / 2`` from it, fading to 35 % of ``level`` at ``radius``, nothing beyond. Pixel
    ``(row, col)`` has its centre at ``(col + .5, row + .5)``."""
    size = canvas.shape[0]
    lo, hi = np.minimum(a, b) - radius, np.maximum(a, b) + radius
    x0, y0 = max(0, math.floor(lo[0])), max(0, math.floor(lo[1]))
    x1, y1 = min(size, math.ceil(hi[0]) + 1), min(size, math.ceil(hi[1]) + 1)
    cx = np.arange(x0, x1)[None, :] + 0.5 - a[0]
    cy = np.arange(y0, y1)[:, None] + 0.5 - a[1]
    ab = b - a
    n2 = float(ab @ ab)
    h = np.clip((cx * ab[0] + cy * ab[1]) / n2, 0.0, 1.0) if n2 > 0 else 0.0
    dist = np.hypot(cx - h * ab[0], cy - h * ab[1])
    v = np.where(dist <= radius, np.rint(level * np.clip(1.65 - 1.3 * dist / radius, 0.35, 1.0)), 0)
    np.maximum(canvas[y0:y1, x0:x1], v.astype(np.uint8), out=canvas[y0:y1, x0:x1])


def _render(geom: PathfinderGeometry, contours, markers) -> np.ndarray:
    """``(size, size)`` uint8 picture of the contours (joint arrays) and markers (centres)."""
    canvas = np.zeros((geom.size, geom.size), np.uint8)
    half_gap = geom.gap_px / 2
    for joints in contours:
        u = np.diff(joints, axis=0)
        u /= np.hypot(u[:, 0], u[:, 1])[:, None]
        for p, q in zip(joints[:-1] + half_gap * u, joints[1:] - half_gap * u, strict=True):
            _ink(canvas, p, q, geom.stroke_radius_px, STROKE_LEVEL)
    for c in markers:
        _ink(canvas, c, c, geom.marker_radius_px, MARKER_LEVEL)
    return canvas


def _draw(geom: PathfinderGeometry, label: int, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """``(picture (size, size) uint8, distractors drawn, placement attempts used)``."""
    for attempt in range(1, 10_001):
        placed = _place(geom, label, rng)
        if placed is not None:
            return _render(geom, *placed), len(placed[0]) - 2, attempt
    raise RuntimeError(f"could not place two contours in a {geom.size}×{geom.size} picture")
