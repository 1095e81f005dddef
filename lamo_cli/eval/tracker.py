"""Colour tracker for physics-world videos: one track per palette colour.

Per pixel, a soft membership to each palette colour by two-colour unmixing: the pixel is explained
as the blend c*A + (1-c)*B of the pair of known colours (palette and scene colours) that fits it
best; an anti-aliased disc edge over the background then gets membership = its coverage c, which
makes the membership-weighted centroid sub-pixel accurate (~0.1 px at 32-64 px). Membership > 0.5
gives a binary mask; its 8-connected components are the candidate objects (a small labelling of our
own: scipy is not available). The track keeps the component nearest to its previous position,
counts other sizeable components of its colour as duplicates, and measures the weighted centroid
and area (radius = sqrt(area / pi)) over that component grown by one pixel (to include the faint
edge pixels). Frames where the object is missing, touches the image border or the occluder are
marked so the law checks can leave them out.

Positions are in pixels with x to the right and y UP (y = H - row), pixel centres at +0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lamo_cli.data.world import COLOUR_NAMES, OCCLUDER_COLOUR, PALETTE, SCENE_COLOURS

MEMBER_THRESHOLD = 0.5
RESIDUAL_FULL = 8.0  # RGB distance from the best blend below which membership is not reduced
RESIDUAL_FADE = 16.0  # ... and over which it fades to zero
PALETTE_PAIR_BIAS = 4.0  # palette-palette blends only occur where two discs touch: prefer other explanations
SCENE_PRUNE = 6.0  # pixels this close to a scene colour have no palette membership (fast path)
OCCLUDER_DISTANCE = 20.0
OCCLUDER_MIN_AREA = 6.0  # px at 64 px


@dataclass
class Track:
    """Per-frame measurements of the object of one palette colour."""

    colour: str
    present: np.ndarray  # [F] bool
    pos: np.ndarray  # [F, 2] px, x right, y up (nan when missing)
    radius: np.ndarray  # [F] px (nan when missing)
    area: np.ndarray  # [F] px^2
    border: np.ndarray  # [F] bool: touches the image border
    occluded: np.ndarray  # [F] bool: touches the occluder
    duplicates: np.ndarray  # [F] int: other sizeable components of the same colour
    core_rgb: np.ndarray  # [F, 3] mean colour of the fully covered pixels (nan when missing)

    @property
    def num_present(self) -> int:
        return int(self.present.sum())

    @property
    def clipped(self) -> np.ndarray:
        """Border frames whose area is well below the track's typical area (partly out of view)."""
        ok = self.present & ~self.border & ~self.occluded
        typical = np.nanmedian(self.area[ok]) if ok.any() else np.nanmedian(self.area[self.present]) if self.present.any() else 0
        return self.present & self.border & (self.area < 0.85 * typical)

    @property
    def valid(self) -> np.ndarray:
        """Frames whose centroid and radius can be trusted."""
        return self.present & ~self.occluded & ~self.clipped


@dataclass
class TrackResult:
    height: int
    width: int
    num_frames: int
    tracks: dict[str, Track] = field(default_factory=dict)
    occluder: np.ndarray | None = None  # [H, W] bool, the static occluder

    def active(self, min_frames: int = 3) -> dict[str, Track]:
        """Tracks seen in at least min_frames frames (shorter ones are specks, not objects)."""
        return {c: t for c, t in self.tracks.items() if t.num_present >= min_frames}

    def object_counts(self) -> np.ndarray:
        """[F] sizeable connected components per frame over all colours (duplicates included)."""
        counts = np.zeros(self.num_frames, dtype=np.int64)
        for track in self.tracks.values():
            counts += track.present.astype(np.int64) + track.duplicates
        return counts


# ==================================================================== membership
_ENDPOINTS = np.array(list(SCENE_COLOURS.values()) + [PALETTE[c] for c in COLOUR_NAMES], dtype=np.float32)
_NUM_SCENE = len(SCENE_COLOURS)
_PAIRS = [(a, b) for a in range(len(_ENDPOINTS)) for b in range(a + 1, len(_ENDPOINTS))]
_SCENE_PAIRS = [(a, b) for a, b in _PAIRS if b < _NUM_SCENE]


def memberships(frames: np.ndarray) -> np.ndarray:
    """float32 [F, K, H, W] soft membership of each pixel to each palette colour (K = 6)."""
    frames = np.asarray(frames)
    f, h, w, _ = frames.shape
    pixels = frames.reshape(-1, 3).astype(np.int32)
    near_scene = np.zeros(pixels.shape[0], dtype=bool)
    for colour in SCENE_COLOURS.values():
        near_scene |= _squared_distance(pixels, colour) < SCENE_PRUNE**2
    idx = np.nonzero(~near_scene)[0]
    out = np.zeros((len(COLOUR_NAMES), pixels.shape[0]), dtype=np.float32)
    if idx.size:  # edges between scene colours (floor, ramp, occluder) have no palette membership
        p = pixels[idx].astype(np.float32)
        scene_edge = np.zeros(idx.size, dtype=bool)
        for a, b in _SCENE_PAIRS:
            scene_edge |= _blend_fit(p, a, b)[1] < SCENE_PRUNE
        idx, p = idx[~scene_edge], p[~scene_edge]
    if idx.size:
        best = np.full(idx.size, np.inf, dtype=np.float32)
        frac = np.zeros(idx.size, dtype=np.float32)
        first = np.zeros(idx.size, dtype=np.int64)
        second = np.zeros(idx.size, dtype=np.int64)
        for a, b in _PAIRS:
            c, residual = _blend_fit(p, a, b)
            if a >= _NUM_SCENE and b >= _NUM_SCENE:
                residual = residual + PALETTE_PAIR_BIAS
            better = residual < best
            best[better], frac[better], first[better], second[better] = residual[better], c[better], a, b
        weight = np.clip(1.0 - (best - RESIDUAL_FULL) / RESIDUAL_FADE, 0.0, 1.0)
        for k in range(len(COLOUR_NAMES)):
            endpoint = k + _NUM_SCENE
            value = np.where(first == endpoint, frac, 0.0) + np.where(second == endpoint, 1.0 - frac, 0.0)
            out[k, idx] = value * weight
    return out.reshape(len(COLOUR_NAMES), f, h, w).transpose(1, 0, 2, 3)


def _blend_fit(p: np.ndarray, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Best blend c*A + (1-c)*B of endpoints a, b for float32 pixels [N, 3]: (c, RGB residual)."""
    direction = _ENDPOINTS[a] - _ENDPOINTS[b]
    offset = p - _ENDPOINTS[b]
    c = np.clip(offset @ direction / float(direction @ direction), 0.0, 1.0)
    rest = offset - c[:, None] * direction[None, :]
    return c, np.sqrt(np.einsum("ij,ij->i", rest, rest))


def _squared_distance(pixels: np.ndarray, colour) -> np.ndarray:
    """Integer squared RGB distance of int32 pixels [N, 3] to one colour."""
    d0 = pixels[:, 0] - int(colour[0])
    d1 = pixels[:, 1] - int(colour[1])
    d2 = pixels[:, 2] - int(colour[2])
    return d0 * d0 + d1 * d1 + d2 * d2


# ==================================================================== labelling
def _dilate(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """3x3 binary dilation over the last two axes, `steps` times."""
    for _ in range(steps):
        padded = np.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)])
        h, w = mask.shape[-2:]
        grown = np.zeros_like(mask)
        for dr in (0, 1, 2):
            for dc in (0, 1, 2):
                grown |= padded[..., dr:dr + h, dc:dc + w]
        mask = grown
    return mask


def components(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """8-connected components of a small binary mask [H, W] as (rows, cols) index arrays.

    A breadth-first flood fill over the set pixels only (frames are small and objects sparse).
    """
    rows, cols = np.nonzero(mask)
    remaining = set(zip(rows.tolist(), cols.tolist()))
    found = []
    while remaining:
        seed = remaining.pop()
        queue, members = [seed], [seed]
        while queue:
            r, c = queue.pop()
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    nb = (r + dr, c + dc)
                    if nb in remaining:
                        remaining.remove(nb)
                        queue.append(nb)
                        members.append(nb)
        members.sort()
        found.append((np.array([m[0] for m in members]), np.array([m[1] for m in members])))
    return found


def label_components(masks: np.ndarray) -> np.ndarray:
    """8-connected component labels of a batch of binary masks [B, H, W] (0 = background, labels
    unique over the batch)."""
    masks = np.asarray(masks, dtype=bool)
    labels = np.zeros(masks.shape, dtype=np.int64)
    next_label = 1
    for index in range(masks.shape[0]):
        for rows, cols in components(masks[index]):
            labels[index, rows, cols] = next_label
            next_label += 1
    return labels


# ==================================================================== tracking
def track_video(frames: np.ndarray, min_area_px: float | None = None, duplicate_ratio: float = 0.3) -> TrackResult:
    """Track every palette colour through uint8 frames [F, H, W, 3]."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [F, H, W, 3], got {frames.shape}")
    f, h, w, _ = frames.shape
    scale2 = (h / 64.0) ** 2
    min_area = float(min_area_px if min_area_px is not None else 3.0 * scale2)
    member = memberships(frames)  # [F, K, H, W]
    binary = member > MEMBER_THRESHOLD
    # The occluder is static: pixels of its colour in most frames (disc edges blending with the
    # floor can pass near its grey, but they move).
    occluder_pixels = (_squared_distance(frames.reshape(-1, 3).astype(np.int32), OCCLUDER_COLOUR)
                       < OCCLUDER_DISTANCE**2).reshape(f, h, w)
    static = occluder_pixels.mean(axis=0) >= 0.5
    result = TrackResult(h, w, f, occluder=static if static.sum() >= OCCLUDER_MIN_AREA * scale2 else None)

    for k, colour in enumerate(COLOUR_NAMES):
        if not binary[:, k].any():
            continue
        track = Track(
            colour=colour, present=np.zeros(f, bool), pos=np.full((f, 2), np.nan), radius=np.full(f, np.nan),
            area=np.zeros(f), border=np.zeros(f, bool), occluded=np.zeros(f, bool),
            duplicates=np.zeros(f, np.int64), core_rgb=np.full((f, 3), np.nan),
        )
        previous: np.ndarray | None = None
        for fi in range(f):
            if not binary[fi, k].any():
                continue
            weights = member[fi, k]
            comps = []
            for rows, cols in components(binary[fi, k]):
                wts = weights[rows, cols]
                mass = float(wts.sum())
                if mass >= min_area:
                    centre = np.array([float((wts * (cols + 0.5)).sum()) / mass, h - float((wts * (rows + 0.5)).sum()) / mass])
                    comps.append((mass, centre, rows, cols))
            if not comps:
                continue
            if previous is None:
                chosen = max(range(len(comps)), key=lambda i: comps[i][0])
            else:
                chosen = min(range(len(comps)), key=lambda i: float(np.linalg.norm(comps[i][1] - previous)))
            mass, _, rows, cols = comps[chosen]
            track.duplicates[fi] = sum(1 for i, c in enumerate(comps) if i != chosen and c[0] >= max(min_area, duplicate_ratio * mass))
            # the component grown by one pixel (faint edge pixels), in a local window
            r0, r1 = max(0, rows.min() - 3), min(h, rows.max() + 4)
            c0, c1 = max(0, cols.min() - 3), min(w, cols.max() + 4)
            local = np.zeros((r1 - r0, c1 - c0), dtype=bool)
            local[rows - r0, cols - c0] = True
            grown = _dilate(local[None])[0]
            wgt = weights[r0:r1, c0:c1] * grown
            area = float(wgt.sum())
            local_rows = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5
            local_cols = np.arange(c0, c1, dtype=np.float64)[None, :] + 0.5
            centre = np.array([float((wgt * local_cols).sum()) / area, h - float((wgt * local_rows).sum()) / area])
            track.present[fi] = True
            track.pos[fi] = centre
            track.area[fi] = area
            track.radius[fi] = float(np.sqrt(area / np.pi))
            track.border[fi] = bool(rows.min() == 0 or rows.max() == h - 1 or cols.min() == 0 or cols.max() == w - 1)
            if result.occluder is not None:
                near = _dilate(local[None], 2)[0]
                track.occluded[fi] = bool((near & result.occluder[r0:r1, c0:c1]).any())
            core = weights[rows, cols] > 0.9
            if core.sum() >= 3:  # slivers (partly hidden, tiny) have no reliable core colour
                track.core_rgb[fi] = frames[fi][rows[core], cols[core]].astype(np.float64).mean(axis=0)
            previous = centre
        if track.present.any():
            result.tracks[colour] = track
    return result
