"""The embedded physics world: seeded 2-D scenes of flat-coloured discs with known laws.

Coordinates: the unit square, x to the right, y UP; a frame of `size` pixels shows it whole
(px per unit = size). Time step DT = 1/8 s per frame (8 fps). Side-view scenes have gravity G
pointing down and a floor band whose top is at FLOOR_Y; top-down scenes ("seen from above, on ice")
have no gravity and four walls. Discs are flat-coloured, one palette colour each (colour = identity),
rendered anti-aliased by supersampling then box filtering.

Simulation is analytic between events (constant acceleration), with exact event times for floor,
wall, ramp-bumper and 1-D disc-disc contacts (restitution e, masses proportional to r^2).

Families: drop, projectile, uniform, collide, ramp, occlude (see PHYSICS_WORLD.md). Captions come
from templates with checkable attributes; `parse_caption` (below, beside the templates) reads them
back. Splits: "train" and "test" share parameter ranges (different seeds); "ood" uses disjoint
ranges (restitution, radius, speed, ramp angle) and family x colour combinations never in train.

Corruptions (`corrupt_clip`) edit a clip's parameters or state and re-render with the same renderer:
they are the failure cases of the physics score's unit tests and the impossible twins of
violation-of-expectation pairs (`impossible_twin`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

# ==================================================================== world constants
DT = 1.0 / 8.0  # seconds per frame
FPS = 8.0
G = 2.0  # units / s^2
FLOOR_Y = 0.1  # top of the floor band
V_REST = 0.4  # units/s: slower rebounds come to rest (a hop of < ~2.5 px and < 3.2 frames)
SUPERSAMPLE = 4
DEFAULT_FRAMES = 33
DEFAULT_SIZE = 64
FAMILIES = ("drop", "projectile", "uniform", "collide", "ramp", "occlude")
SPLITS = ("train", "test", "ood")
SIDE_VIEW = frozenset({"drop", "projectile", "ramp", "occlude"})  # gravity and a floor band

# Palette far apart in RGB; scene colours far from every palette colour and from their blends.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 200, 30),
    "magenta": (195, 50, 200),
    "cyan": (30, 195, 205),
}
COLOUR_NAMES = tuple(PALETTE)
BACKGROUND = (236, 236, 230)
FLOOR_COLOUR = (140, 120, 100)  # floor band and ramp
OCCLUDER_COLOUR = (105, 105, 115)
SCENE_COLOURS = {"background": BACKGROUND, "floor": FLOOR_COLOUR, "occluder": OCCLUDER_COLOUR}

# Held out of train/test: the ood split's first object always has this colour in this family.
OOD_COLOUR = {"drop": "magenta", "projectile": "cyan", "uniform": "yellow", "collide": "green", "ramp": "blue", "occlude": "red"}

# Categorical attribute boundaries (shared by the sampler and the physics score's attribute checks).
SIZE_BOUNDARY = 0.068  # radius in units: small below, large above
BOUNCY_BOUNDARY = 0.65  # floor restitution: "bounces high" above, "barely bounces" below
ELASTIC_BOUNDARY = 0.75  # collision restitution: elastic above, soft below
STEEP_BOUNDARY_DEG = 19.0
SPEED_BOUNDARY = {"projectile": 0.26, "uniform": 0.32, "collide": 0.35, "occlude": 0.23}  # units/s

# Continuous parameter ranges: train (also test) and ood are disjoint.
RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "train": {
        "radius_small": (0.045, 0.058), "radius_large": (0.078, 0.095),
        "e_bouncy": (0.72, 0.85), "e_soft": (0.40, 0.55),
        "projectile_slow": (0.12, 0.20), "projectile_fast": (0.32, 0.45),
        "uniform_slow": (0.15, 0.25), "uniform_fast": (0.40, 0.55),
        "collide_slow": (0.20, 0.30), "collide_fast": (0.40, 0.55),
        "occlude_slow": (0.16, 0.20), "occlude_fast": (0.26, 0.32),
        "occlude_radius_small": (0.045, 0.058), "occlude_radius_large": (0.070, 0.080),
        "ramp_gentle": (12.0, 16.0), "ramp_steep": (22.0, 28.0),
        "ramp_e": (0.5, 0.75),
    },
    "ood": {
        "radius_small": (0.038, 0.044), "radius_large": (0.097, 0.105),
        "e_bouncy": (0.86, 0.92), "e_soft": (0.28, 0.38),
        "projectile_slow": (0.08, 0.11), "projectile_fast": (0.46, 0.55),
        "uniform_slow": (0.10, 0.14), "uniform_fast": (0.56, 0.65),
        "collide_slow": (0.15, 0.19), "collide_fast": (0.56, 0.62),
        "occlude_slow": (0.14, 0.155), "occlude_fast": (0.33, 0.36),
        "occlude_radius_small": (0.038, 0.044), "occlude_radius_large": (0.082, 0.086),
        "ramp_gentle": (9.0, 11.0), "ramp_steep": (29.0, 32.0),
        "ramp_e": (0.76, 0.85),
    },
}
RANGES["test"] = RANGES["train"]

REGIONS = {  # (vertical third, horizontal third) -> caption words
    ("upper", "left"): "upper left", ("upper", "center"): "top", ("upper", "right"): "upper right",
    ("middle", "left"): "left", ("middle", "center"): "center", ("middle", "right"): "right",
    ("lower", "left"): "lower left", ("lower", "center"): "bottom", ("lower", "right"): "lower right",
}
DIRECTIONS = {  # canonical name -> (unit vector, caption phrase)
    "right": ((1.0, 0.0), "to the right"),
    "up-right": ((1.0, 1.0), "up and to the right"),
    "up": ((0.0, 1.0), "upward"),
    "up-left": ((-1.0, 1.0), "up and to the left"),
    "left": ((-1.0, 0.0), "to the left"),
    "down-left": ((-1.0, -1.0), "down and to the left"),
    "down": ((0.0, -1.0), "downward"),
    "down-right": ((1.0, -1.0), "down and to the right"),
}
DIRECTION_ORDER = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")  # 45 deg steps


def region_of(x: float, y: float) -> str:
    """Caption words of the ninth of the unit square that holds (x, y)."""
    vertical = "upper" if y >= 2 / 3 else "middle" if y >= 1 / 3 else "lower"
    horizontal = "left" if x < 1 / 3 else "center" if x < 2 / 3 else "right"
    return REGIONS[(vertical, horizontal)]


def direction_of(vx: float, vy: float) -> str:
    """The nearest of the eight compass directions (45 degree sectors)."""
    angle = math.degrees(math.atan2(vy, vx)) % 360.0
    return DIRECTION_ORDER[int(round(angle / 45.0)) % 8]


# ==================================================================== the clip
@dataclass
class Clip:
    """One simulated clip: caption, attributes and per-frame state (world units, y up, seconds)."""

    family: str
    split: str
    caption: str
    attributes: dict  # every categorical attribute of the scene (ground truth)
    caption_attributes: dict  # the subset the caption states; parse_caption(caption) returns exactly this
    params: dict  # the continuous parameters the scene was simulated from (re-simulation, corruptions)
    positions: np.ndarray  # [F, N, 2] disc centres
    velocities: np.ndarray  # [F, N, 2]
    radii: np.ndarray  # [F, N]
    colours: np.ndarray  # [F, N] palette indices (into COLOUR_NAMES)
    visible: np.ndarray  # [F, N] bool
    events: list[dict]  # contacts: {"t", "frame", "kind", "objects", "v_before", "v_after"}
    scene: dict  # static geometry: view, floor, ramp, occluder
    num_frames: int = DEFAULT_FRAMES
    size: int = DEFAULT_SIZE
    corruption: str | None = None

    @property
    def num_objects(self) -> int:
        return self.positions.shape[1]

    def state_dict(self) -> dict:
        """JSON-ready full state (the NAME.state.json sidecar)."""

        def rounded(array: np.ndarray, digits: int = 6) -> list:
            return np.round(np.asarray(array, dtype=np.float64), digits).tolist()

        return {
            "family": self.family,
            "split": self.split,
            "caption": self.caption,
            "attributes": self.attributes,
            "caption_attributes": self.caption_attributes,
            "corruption": self.corruption,
            "g": G,
            "e": self.params.get("e"),
            "dt": DT,
            "fps": FPS,
            "floor_y": FLOOR_Y,
            "px_per_unit": self.size,
            "size": self.size,
            "num_frames": self.num_frames,
            "palette": {name: list(rgb) for name, rgb in PALETTE.items()},
            "params": self.params,
            "scene": self.scene,
            "positions": rounded(self.positions),
            "velocities": rounded(self.velocities),
            "radii": rounded(self.radii),
            "colours": [[COLOUR_NAMES[int(c)] for c in row] for row in self.colours],
            "visible": self.visible.astype(bool).tolist(),
            "events": self.events,
        }


def clip_from_state(state: dict) -> Clip:
    """Inverse of Clip.state_dict (e.g. to re-render a ground-truth clip from its sidecar)."""
    index = {name: i for i, name in enumerate(COLOUR_NAMES)}
    return Clip(
        family=state["family"],
        split=state.get("split", "train"),
        caption=state["caption"],
        attributes=state.get("attributes", {}),
        caption_attributes=state.get("caption_attributes", {}),
        params=state.get("params", {}),
        positions=np.asarray(state["positions"], dtype=np.float64),
        velocities=np.asarray(state["velocities"], dtype=np.float64),
        radii=np.asarray(state["radii"], dtype=np.float64),
        colours=np.asarray([[index[c] for c in row] for row in state["colours"]], dtype=np.int64),
        visible=np.asarray(state["visible"], dtype=bool),
        events=state.get("events", []),
        scene=state["scene"],
        num_frames=int(state["num_frames"]),
        size=int(state["size"]),
        corruption=state.get("corruption"),
    )


# ==================================================================== event-driven simulation
@dataclass
class PhysicsConfig:
    """What the integrator needs; corruptions change fields of it (never the integrator)."""

    gravity: tuple[float, float] = (0.0, -G)
    floor: float | None = FLOOR_Y  # y of the floor top; None = no floor (top-down)
    floor_e: float = 0.8
    floor_offset: float = 0.0  # corruption: the bounce happens this far below the floor top
    first_floor_e: float | None = None  # corruption: restitution of the first floor bounce only
    vertical_walls: bool = False  # top-down scenes also have walls at y = 0 and y = 1
    wall_e: float = 1.0
    first_wall_speed_factor: float | None = None  # corruption: speed gain at the first wall contact
    disc_collisions: bool = False  # 1-D collisions along x (discs on one horizontal line)
    disc_e: float = 1.0
    collision_rule: str = "physical"  # "reverse": each disc bounces back as off a wall (momentum violation)
    gravity_change: tuple[int, tuple[float, float]] | None = None  # (frame, new gravity) for twins
    v_rest: float = V_REST


@dataclass
class _Body:
    pos: np.ndarray
    vel: np.ndarray
    radius: float
    resting: bool = False


def _first_contact(c: float, b: float, a2: float, limit: float) -> float | None:
    """First tau in [0, limit] where f(tau) = c + b tau + a2 tau^2 reaches 0 while decreasing.

    f is a gap (>= 0 while separated). Already touching and approaching counts as tau = 0.
    """
    if c <= 1e-12 and b < 0:
        return 0.0
    roots: list[float] = []
    if abs(a2) < 1e-15:
        if b < 0:
            roots.append(-c / b)
    else:
        disc = b * b - 4 * a2 * c
        if disc >= 0:
            sq = math.sqrt(disc)
            roots.extend([(-b - sq) / (2 * a2), (-b + sq) / (2 * a2)])
    best = None
    for tau in roots:
        if 1e-12 < tau <= limit and b + 2 * a2 * tau < 0 and (best is None or tau < best):
            best = tau
    return best


def _acceleration(body: _Body, gravity: np.ndarray) -> np.ndarray:
    return np.array([gravity[0], 0.0]) if body.resting else gravity


def _next_event(bodies: list[_Body], cfg: PhysicsConfig, gravity: np.ndarray, limit: float):
    best: tuple[float, str, tuple[int, ...]] | None = None

    def consider(tau: float | None, kind: str, objects: tuple[int, ...]) -> None:
        nonlocal best
        if tau is not None and (best is None or tau < best[0]):
            best = (tau, kind, objects)

    for i, body in enumerate(bodies):
        acc = _acceleration(body, gravity)
        (x, y), (vx, vy), r = body.pos, body.vel, body.radius
        if cfg.floor is not None and not body.resting:
            contact = cfg.floor + cfg.floor_offset + r
            consider(_first_contact(y - contact, vy, 0.5 * acc[1], limit), "floor", (i,))
        consider(_first_contact(x - r, vx, 0.5 * acc[0], limit), "wall_left", (i,))
        consider(_first_contact(1.0 - r - x, -vx, -0.5 * acc[0], limit), "wall_right", (i,))
        if cfg.vertical_walls:
            consider(_first_contact(y - r, vy, 0.5 * acc[1], limit), "wall_bottom", (i,))
            consider(_first_contact(1.0 - r - y, -vy, -0.5 * acc[1], limit), "wall_top", (i,))
    if cfg.disc_collisions:
        order = sorted(range(len(bodies)), key=lambda k: bodies[k].pos[0])
        for left, right in zip(order[:-1], order[1:]):
            a, b = bodies[left], bodies[right]
            gap = (b.pos[0] - a.pos[0]) - (a.radius + b.radius)
            rel_acc = _acceleration(b, gravity)[0] - _acceleration(a, gravity)[0]
            consider(_first_contact(gap, b.vel[0] - a.vel[0], 0.5 * rel_acc, limit), "disc", (left, right))
    return best


def _move(bodies: list[_Body], gravity: np.ndarray, tau: float) -> None:
    for body in bodies:
        acc = _acceleration(body, gravity)
        body.pos = body.pos + body.vel * tau + 0.5 * acc * tau * tau
        body.vel = body.vel + acc * tau


def _apply_event(bodies: list[_Body], cfg: PhysicsConfig, kind: str, objects: tuple[int, ...], counts: dict) -> None:
    if kind == "floor":
        body = bodies[objects[0]]
        e = cfg.first_floor_e if (cfg.first_floor_e is not None and counts["floor"] == 0) else cfg.floor_e
        counts["floor"] += 1
        body.vel[1] = -e * body.vel[1]
        if abs(body.vel[1]) < cfg.v_rest:  # too small a hop to resolve: it rests (and may slide)
            body.vel[1] = 0.0
            body.resting = True
            body.pos[1] = cfg.floor + cfg.floor_offset + body.radius
    elif kind.startswith("wall"):
        body = bodies[objects[0]]
        axis = 0 if kind in ("wall_left", "wall_right") else 1
        body.vel[axis] = -cfg.wall_e * body.vel[axis]
        if cfg.first_wall_speed_factor is not None and counts["wall"] == 0:
            body.vel = body.vel * cfg.first_wall_speed_factor
        counts["wall"] += 1
    elif kind == "disc":
        a, b = bodies[objects[0]], bodies[objects[1]]
        ma, mb = a.radius**2, b.radius**2
        ua, ub = a.vel[0], b.vel[0]
        e = cfg.disc_e
        if cfg.collision_rule == "reverse":
            va, vb = -e * ua, -e * ub
        else:
            momentum = ma * ua + mb * ub
            va = (momentum + mb * e * (ub - ua)) / (ma + mb)
            vb = (momentum + ma * e * (ua - ub)) / (ma + mb)
        a.vel[0], b.vel[0] = va, vb
        counts["disc"] += 1


def integrate(bodies: list[_Body], cfg: PhysicsConfig, num_frames: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Positions and velocities at frame times [F, N, 2] and the contact events, exactly."""
    n = len(bodies)
    positions = np.zeros((num_frames, n, 2))
    velocities = np.zeros((num_frames, n, 2))
    events: list[dict] = []
    counts = {"floor": 0, "wall": 0, "disc": 0}
    gravity = np.asarray(cfg.gravity, dtype=np.float64)
    now = 0.0
    for frame in range(num_frames):
        if cfg.gravity_change is not None and frame == cfg.gravity_change[0]:
            gravity = np.asarray(cfg.gravity_change[1], dtype=np.float64)
            for body in bodies:
                body.resting = False
        if frame > 0:
            remaining = DT
            for _ in range(10_000):
                found = _next_event(bodies, cfg, gravity, remaining)
                if found is None:
                    _move(bodies, gravity, remaining)
                    now += remaining
                    break
                tau, kind, objects = found
                _move(bodies, gravity, tau)
                now += tau
                remaining -= tau
                before = [bodies[k].vel.copy() for k in objects]
                _apply_event(bodies, cfg, kind, objects, counts)
                events.append({
                    "t": round(now, 6), "frame": round(now / DT, 4), "kind": kind, "objects": list(objects),
                    "v_before": [np.round(v, 6).tolist() for v in before],
                    "v_after": [np.round(bodies[k].vel, 6).tolist() for k in objects],
                })
            else:  # pragma: no cover - a Zeno cascade the rest rule should prevent
                raise RuntimeError("physics world: too many contact events in one frame")
        for k, body in enumerate(bodies):
            positions[frame, k] = body.pos
            velocities[frame, k] = body.vel
    return positions, velocities, events


def integrate_ramp(s0: float, v0: float, accel: float, e: float, num_frames: int, v_rest: float = V_REST,
                   first_e: float | None = None) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """1-D motion along a slope: s = distance up the slope from the bumper contact, s'' = -accel.

    Returns s [F], s' [F] at frame times and the bumper events (restitution e).
    """
    s, v, resting = s0, v0, False
    out_s, out_v, events = np.zeros(num_frames), np.zeros(num_frames), []
    now, bounces = 0.0, 0
    for frame in range(num_frames):
        if frame > 0:
            remaining = DT
            while remaining > 0:
                if resting:
                    now += remaining
                    break
                tau = _first_contact(s, v, -0.5 * accel, remaining)
                if tau is None:
                    s, v = s + v * remaining - 0.5 * accel * remaining**2, v - accel * remaining
                    now += remaining
                    break
                s, v = s + v * tau - 0.5 * accel * tau**2, v - accel * tau
                now += tau
                remaining -= tau
                before = v
                e_now = first_e if (first_e is not None and bounces == 0) else e
                v = -e_now * v
                bounces += 1
                if abs(v) < v_rest:
                    v, s, resting = 0.0, 0.0, True
                events.append({"t": round(now, 6), "frame": round(now / DT, 4), "kind": "bumper", "objects": [0],
                               "v_before": round(before, 6), "v_after": round(v, 6)})
        out_s[frame], out_v[frame] = s, v
    return out_s, out_v, events


# ==================================================================== parameter sampling
def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _pick(rng: np.random.Generator, options: Sequence, forced: Any = None):
    return forced if forced is not None else options[int(rng.integers(len(options)))]


def _colours_for(family: str, split: str, count: int, rng: np.random.Generator, forced: list[str] | None) -> list[str]:
    if forced:
        return list(forced)
    held_out = OOD_COLOUR[family]
    pool = [c for c in COLOUR_NAMES if c != held_out]
    picks = [pool[i] for i in rng.permutation(len(pool))[:count]]
    if split == "ood":
        picks[0] = held_out
    return picks


def _axis_range(third: str, r: float) -> tuple[float, float]:
    """Inside a third of [0, 1], away from its edges (unambiguous start region) and the walls."""
    margin = 0.045
    if third in ("left", "lower"):
        return max(r + 0.02, margin), 1 / 3 - margin
    if third in ("center", "middle"):
        return 1 / 3 + margin, 2 / 3 - margin
    return 2 / 3 + margin, min(1.0 - r - 0.02, 1.0 - margin)


def sample_params(family: str, rng: np.random.Generator, split: str = "train", choices: dict | None = None) -> dict:
    """Draw the categorical attributes and the continuous parameters of one scene.

    `choices` forces categorical values (e.g. {"bounciness": "bouncy", "sizes": ["large"],
    "config": "at_rest", "colours": ["red"]}); the rest is drawn from `rng`.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    choices = dict(choices or {})
    ranges = RANGES[split]
    count = 2 if family == "collide" else 1
    colours = _colours_for(family, split, count, rng, choices.get("colours"))
    sizes = list(choices.get("sizes") or [_pick(rng, ("small", "large")) for _ in range(count)])
    prefix = "occlude_" if family == "occlude" else ""  # the occluder must hide a disc in time
    radii = [_uniform(rng, ranges[f"{prefix}radius_{s}"]) for s in sizes]
    attrs: dict[str, Any] = {"family": family, "colours": colours, "count": count, "sizes": sizes}
    p: dict[str, Any] = {"family": family, "colours": colours, "radii": radii}
    r = radii[0]

    if family in ("drop", "projectile"):
        bounciness = _pick(rng, ("bouncy", "soft"), choices.get("bounciness"))
        p["e"] = _uniform(rng, ranges[f"e_{bounciness}"])
        attrs["bounciness"] = bounciness
        if family == "drop":
            horizontal = _pick(rng, ("left", "center", "right"), choices.get("horizontal"))
            x0 = _uniform(rng, _axis_range(horizontal, r))
            y0 = _uniform(rng, (0.72, min(0.88, 0.98 - r)))
            vel = (0.0, 0.0)
        else:
            direction = _pick(rng, ("left", "right"), choices.get("direction"))
            speed = _pick(rng, ("slow", "fast"), choices.get("speed"))
            vertical = _pick(rng, ("upper", "middle"), choices.get("vertical"))
            horizontal = "left" if direction == "right" else "right"
            x0 = _uniform(rng, _axis_range(horizontal, r))
            y0 = _uniform(rng, (0.72, 0.85) if vertical == "upper" else (0.42, 0.58))
            vx = _uniform(rng, ranges[f"projectile_{speed}"]) * (1 if direction == "right" else -1)
            vy_max = math.sqrt(max(0.0, 2 * G * (0.95 - r - y0)))
            vy = min(_uniform(rng, (-0.2, 0.5)), vy_max)
            vel = (vx, vy)
            attrs.update(direction=direction, speed=speed)
        attrs["region"] = region_of(x0, y0)
        p["bodies"] = [{"pos": [x0, y0], "vel": list(vel)}]

    elif family == "uniform":
        speed = _pick(rng, ("slow", "fast"), choices.get("speed"))
        magnitude = _uniform(rng, ranges[f"uniform_{speed}"])
        for _ in range(200):  # a start and heading that leave >= 0.6 s before the first wall
            vertical = _pick(rng, ("upper", "middle", "lower"), choices.get("vertical"))
            horizontal = _pick(rng, ("left", "center", "right"), choices.get("horizontal"))
            x0 = _uniform(rng, _axis_range(horizontal, r))
            y0 = _uniform(rng, _axis_range(vertical, r))
            direction = _pick(rng, DIRECTION_ORDER, choices.get("direction"))
            angle = math.radians(45.0 * DIRECTION_ORDER.index(direction) + float(rng.uniform(-12, 12)))
            vx, vy = magnitude * math.cos(angle), magnitude * math.sin(angle)
            if _time_to_wall(x0, y0, vx, vy, r) >= 0.6:
                break
        attrs.update(region=region_of(x0, y0), direction=direction, speed=speed)
        p["bodies"] = [{"pos": [x0, y0], "vel": [vx, vy]}]

    elif family == "collide":
        span = (_num_frames_hint(choices) - 1) * DT
        config = _pick(rng, ("at_rest", "toward"), choices.get("config"))
        bounciness = _pick(rng, ("elastic", "soft"), choices.get("bounciness"))
        p["e"] = 1.0 if bounciness == "elastic" else 0.5
        r1, r2 = radii
        if config == "at_rest":
            speed = _pick(rng, ("slow", "fast"), choices.get("speed"))
            direction = _pick(rng, ("left", "right"), choices.get("direction"))
            v = _uniform(rng, ranges[f"collide_{speed}"])
            target = _uniform(rng, (0.45, 0.6))
            t_hit = _uniform(rng, (0.25, 0.5)) * span  # 1-2 s into a 33-frame clip
            mover = target - (r1 + r2) - v * t_hit
            mover = max(mover, r1 + 0.03)
            x1, x2, v1, v2 = mover, target, v, 0.0
            if direction == "left":
                x1, x2, v1 = 1.0 - x1, 1.0 - x2, -v
            attrs.update(config=config, speed=speed, direction=direction)
        else:
            v1 = _uniform(rng, ranges["collide_slow"] if rng.random() < 0.5 else ranges["collide_fast"])
            v2 = _uniform(rng, ranges["collide_slow"] if rng.random() < 0.5 else ranges["collide_fast"])
            contact = _uniform(rng, (0.42, 0.58))
            t_hit = _uniform(rng, (0.25, 0.5)) * span
            t_hit = min(t_hit, (contact - 2 * r1 - 0.03) / v1, (1.0 - contact - 2 * r2 - 0.03) / v2)
            x1, x2, v2 = contact - r1 - v1 * t_hit, contact + r2 + v2 * t_hit, -v2
            if rng.random() < 0.5:  # mirror so either colour can come from either side
                x1, x2, v1, v2 = 1.0 - x1, 1.0 - x2, -v1, -v2
            attrs.update(config=config)
        attrs["bounciness"] = bounciness
        p["bodies"] = [{"pos": [x1, 0.5], "vel": [v1, 0.0]}, {"pos": [x2, 0.5], "vel": [v2, 0.0]}]

    elif family == "ramp":
        steepness = _pick(rng, ("gentle", "steep"), choices.get("steepness"))
        direction = _pick(rng, ("left", "right"), choices.get("direction"))
        theta = _uniform(rng, ranges[f"ramp_{steepness}"])
        p["e"] = _uniform(rng, ranges["ramp_e"])
        x_start = _uniform(rng, (0.12, 0.25))  # along x from the high end
        rad = math.radians(theta)
        p.update(theta_deg=theta, ramp_direction=direction,
                 s0=(1.0 - r - x_start) / math.cos(rad), v0=-_uniform(rng, (0.02, 0.1)))  # a nudge downhill
        attrs.update(direction=direction, steepness=steepness)

    elif family == "occlude":
        speed = _pick(rng, ("slow", "fast"), choices.get("speed"))
        direction = _pick(rng, ("left", "right"), choices.get("direction"))
        v = _uniform(rng, ranges[f"occlude_{speed}"])
        width = 2 * r + max(0.03, 0.14 * v) + _uniform(rng, (0.0, 0.01))  # fully hidden for >= ~1 frame
        span = (_num_frames_hint(choices) - 1) * DT
        pass_time = (width + 2 * r + 0.07) / v  # partly hidden (with the tracker's 2 px margin) until clear
        # Where the whole pass fits (33 frames), >= 0.4 s of flight before the bar; where it cannot (17
        # frames, a slow disc), 6 clear frames instead, so that the flight in is long enough to judge.
        earliest = 0.4 if span - pass_time - 0.35 >= 0.4 else 6 * DT
        for _ in range(200):  # room before the bar, the pass, and clean frames after it before the wall
            x0 = r + 0.02 + _uniform(rng, (0.0, 0.08))
            t_enter = _uniform(rng, (earliest, max(earliest, min(1.0, span - pass_time - 0.35))))
            centre = x0 + r + v * t_enter + width / 2
            if centre - width / 2 >= 0.2 and centre + width / 2 + 2 * r + v * 0.3 <= 0.99:
                break
        else:
            x0 = r + 0.02
            centre = x0 + r + v * earliest + width / 2
        if direction == "left":
            x0, centre, v = 1.0 - x0, 1.0 - centre, -v
        p["occluder"] = {"x0": centre - width / 2, "x1": centre + width / 2, "y0": FLOOR_Y,
                         "y1": _uniform(rng, (0.5, 0.7))}
        p["bodies"] = [{"pos": [x0, FLOOR_Y + r], "vel": [v, 0.0], "resting": True}]
        attrs.update(direction=direction, speed=speed)
    p["attributes"] = attrs
    return p


def _num_frames_hint(choices: dict) -> int:
    return int(choices.get("num_frames", DEFAULT_FRAMES))


def _time_to_wall(x: float, y: float, vx: float, vy: float, r: float) -> float:
    times = []
    for pos, vel in ((x, vx), (y, vy)):
        if vel > 0:
            times.append((1.0 - r - pos) / vel)
        elif vel < 0:
            times.append((pos - r) / -vel)
    return min(times) if times else math.inf


# ==================================================================== scene simulation
def physics_config(family: str, params: dict) -> PhysicsConfig:
    """The integrator settings of a family, with any corruption overrides in params["physics"]."""
    if family in ("uniform", "collide"):
        cfg = PhysicsConfig(gravity=(0.0, 0.0), floor=None, vertical_walls=True,
                            disc_collisions=family == "collide", disc_e=params.get("e", 1.0))
    else:
        cfg = PhysicsConfig(floor_e=params.get("e", 0.8))
    for key, value in (params.get("physics") or {}).items():
        if key == "gravity_change" and value is not None:
            value = (int(value[0]), tuple(value[1]))
        elif key == "gravity":
            value = tuple(value)
        setattr(cfg, key, value)
    return cfg


def scene_of(family: str, params: dict) -> dict:
    scene: dict[str, Any] = {"view": "side" if family in SIDE_VIEW else "top", "floor_y": FLOOR_Y if family in SIDE_VIEW else None}
    if family == "ramp":
        scene["ramp"] = {"theta_deg": params["theta_deg"], "direction": params["ramp_direction"]}
    if family == "occlude":
        scene["occluder"] = dict(params["occluder"])
    return scene


def simulate_params(params: dict, num_frames: int = DEFAULT_FRAMES, size: int = DEFAULT_SIZE, split: str = "train",
                    caption_rng: np.random.Generator | None = None, mention: dict | None = None) -> Clip:
    """Simulate a scene from its parameters (see sample_params) and build its caption."""
    family = params["family"]
    radii = list(params["radii"])
    if family == "ramp":
        theta = math.radians(params["theta_deg"])
        accel = G * math.sin(theta) * (params.get("physics") or {}).get("gravity_scale", 1.0)
        physics = params.get("physics") or {}
        s, v, events = integrate_ramp(params["s0"], params["v0"], accel, params["e"], num_frames,
                                      first_e=physics.get("first_floor_e"))
        r = radii[0]
        # centre line: touches the bumper (wall) at s = 0 and rises along (-cos, sin) for a ramp down to the right
        base = np.array([1.0 - r, FLOOR_Y + r * math.tan(theta) + r / math.cos(theta)])
        up = np.array([-math.cos(theta), math.sin(theta)])
        if params["ramp_direction"] == "left":
            base[0], up[0] = 1.0 - base[0], -up[0]
        positions = (base[None, :] + s[:, None] * up[None, :])[:, None, :]
        velocities = (v[:, None] * up[None, :])[:, None, :]
    else:
        bodies = [_Body(np.array(b["pos"], dtype=np.float64), np.array(b["vel"], dtype=np.float64), radii[i],
                        bool(b.get("resting", False))) for i, b in enumerate(params["bodies"])]
        positions, velocities, events = integrate(bodies, physics_config(family, params), num_frames)
    n = positions.shape[1]
    attrs = params["attributes"]
    rng = caption_rng if caption_rng is not None else np.random.default_rng(0)
    caption, stated = make_caption(attrs, rng, mention)
    colour_index = np.array([COLOUR_NAMES.index(c) for c in params["colours"]], dtype=np.int64)
    return Clip(
        family=family, split=split, caption=caption, attributes=attrs, caption_attributes=stated,
        params=_jsonable(params), positions=positions, velocities=velocities,
        radii=np.tile(np.asarray(radii, dtype=np.float64)[None, :], (num_frames, 1)),
        colours=np.tile(colour_index[None, :], (num_frames, 1)), visible=np.ones((num_frames, n), dtype=bool),
        events=events, scene=scene_of(family, params), num_frames=num_frames, size=size,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def simulate_clip(family: str, rng: np.random.Generator, split: str = "train", num_frames: int = DEFAULT_FRAMES,
                  size: int = DEFAULT_SIZE, choices: dict | None = None, mention: dict | None = None) -> Clip:
    """Draw one clip of `family` from the `split` distribution (deterministic given rng's state).

    Draws whose contacts crowd together (two contacts of one disc less than MIN_EVENT_GAP frames
    apart, or within a frame of the clip's start) or graze (normal speed < MIN_CONTACT_SPEED) are
    redrawn: a tracker at 8 fps cannot resolve them.
    """
    choices = {**(choices or {}), "num_frames": num_frames}
    for _ in range(100):
        params = sample_params(family, rng, split, choices)
        clip = simulate_params(params, num_frames, size, split, caption_rng=rng, mention=mention)
        if _events_separated(clip.events):
            return clip
    return clip


MIN_EVENT_GAP = 3.0  # frames
MIN_CONTACT_SPEED = 0.12  # units/s along the contact normal (~1 px per frame at 64 px): no grazing


def _normal_speed(event: dict) -> float:
    kind, before = event["kind"], event["v_before"]
    if kind == "bumper":
        return abs(float(before))
    if kind == "disc":
        return abs(float(before[1][0]) - float(before[0][0]))
    axis = 1 if kind in ("floor", "wall_top", "wall_bottom") else 0
    return abs(float(before[0][axis]))


def _events_separated(events: list[dict]) -> bool:
    """Contacts a tracker at 8 fps can resolve: apart in time, not at the very start, not grazing."""
    last: dict[int, float] = {}
    for event in events:
        if event["frame"] < 1.0 or _normal_speed(event) < MIN_CONTACT_SPEED:
            return False
        for obj in event["objects"]:
            if obj in last and event["frame"] - last[obj] < MIN_EVENT_GAP:
                return False
            last[obj] = event["frame"]
    return True


# ==================================================================== captions (templates + parser)
SIZE_PHRASE = {"small": "small ", "large": "large ", None: ""}
BOUNCE_PHRASE = {"bouncy": " and bounces high", "soft": " and barely bounces", None: " and bounces"}
COLLIDE_PHRASE = {"elastic": " elastically", "soft": " softly", None: ""}
SPEED_PHRASE = {"projectile": {"slow": "slowly ", "fast": "fast ", None: ""},
                "uniform": {"slow": "slowly ", "fast": "quickly ", None: ""},
                "collide": {"slow": "slowly ", "fast": "quickly ", None: ""},
                "occlude": {"slow": "slowly ", "fast": "quickly ", None: ""}}
STEEP_PHRASE = {"steep": "steep ", "gentle": "gentle ", None: ""}
OPTIONAL = {"sizes": 0.5, "speed": 0.7, "bounciness": 0.7, "steepness": 0.7}  # chance each is stated


# Every word the caption templates above can produce; the `tiny` backbone's word-level tokenizer is
# built from it (a test generates captions of every split and checks none falls outside it).
TEMPLATE_WORDS = ("a the ball drops from and bounces high barely is thrown slowly fast seen above glides quickly "
                  "across ice slide slides into at rest they collide elastically softly toward each other down ramp "
                  "steep gentle rolls passes behind grey bar small large")


def caption_vocabulary() -> list[str]:
    """Sorted lower-case words (and the comma) of every caption the world writes."""
    words = set(TEMPLATE_WORDS.split()) | {","} | set(COLOUR_NAMES)
    for phrase in [*REGIONS.values(), *(p for _, p in DIRECTIONS.values())]:
        words |= set(phrase.split())
    return sorted(words)


def make_caption(attrs: dict, rng: np.random.Generator, mention: dict | None = None) -> tuple[str, dict]:
    """Caption from the family's template; optional attributes are stated with OPTIONAL chances
    (or as `mention` forces: {"sizes": True, "speed": False, ...}, or mention="all"/"none").
    Returns (caption, the attributes it states)."""
    if mention == "all":
        mention = {k: True for k in OPTIONAL}
    elif mention == "none":
        mention = {k: False for k in OPTIONAL}
    mention = dict(mention or {})

    def says(key: str) -> bool:
        wanted = mention.get(key)
        draw = bool(rng.random() < OPTIONAL[key])  # always draw: the stream does not depend on `mention`
        return draw if wanted is None else bool(wanted)

    family = attrs["family"]
    colours = attrs["colours"]
    sizes = [s if says("sizes") else None for s in attrs["sizes"]]
    stated: dict[str, Any] = {"family": family, "colours": list(colours), "count": attrs["count"]}
    if any(s is not None for s in sizes):
        stated["sizes"] = sizes
    obj = [f"{SIZE_PHRASE[s]}{c}" for s, c in zip(sizes, colours)]

    def optional(key: str) -> Any:
        value = attrs.get(key) if says(key) else None
        if value is not None:
            stated[key] = value
        return value

    if family == "drop":
        bounce = optional("bounciness")
        stated["region"] = attrs["region"]
        text = f"a {obj[0]} ball drops from the {attrs['region']}{BOUNCE_PHRASE[bounce]}"
    elif family == "projectile":
        speed = optional("speed")
        bounce = optional("bounciness")
        stated.update(direction=attrs["direction"], region=attrs["region"])
        text = (f"a {obj[0]} ball is thrown {SPEED_PHRASE['projectile'][speed]}{DIRECTIONS[attrs['direction']][1]} "
                f"from the {attrs['region']}{BOUNCE_PHRASE[bounce]}")
    elif family == "uniform":
        speed = optional("speed")
        stated.update(direction=attrs["direction"], region=attrs["region"])
        text = (f"seen from above, a {obj[0]} ball glides {SPEED_PHRASE['uniform'][speed]}"
                f"{DIRECTIONS[attrs['direction']][1]} across the ice from the {attrs['region']}")
    elif family == "collide":
        stated["config"] = attrs["config"]
        if attrs["config"] == "at_rest":
            speed = optional("speed")
            bounce = optional("bounciness")
            stated["direction"] = attrs["direction"]
            text = (f"seen from above, a {obj[0]} ball slides {SPEED_PHRASE['collide'][speed]}"
                    f"{DIRECTIONS[attrs['direction']][1]} into a {obj[1]} ball at rest and they collide"
                    f"{COLLIDE_PHRASE[bounce]}")
        else:
            says("speed")  # keep the random stream aligned between configurations
            bounce = optional("bounciness")
            text = (f"seen from above, a {obj[0]} ball and a {obj[1]} ball slide toward each other and collide"
                    f"{COLLIDE_PHRASE[bounce]}")
    elif family == "ramp":
        steep = optional("steepness")
        stated["direction"] = attrs["direction"]
        text = f"a {obj[0]} ball slides down a {STEEP_PHRASE[steep]}ramp {DIRECTIONS[attrs['direction']][1]}"
    elif family == "occlude":
        speed = optional("speed")
        stated["direction"] = attrs["direction"]
        text = (f"a {obj[0]} ball rolls {SPEED_PHRASE['occlude'][speed]}{DIRECTIONS[attrs['direction']][1]} "
                f"and passes behind a grey bar")
    else:
        raise ValueError(f"unknown family {family!r}")
    return text, stated


_COLOUR = "|".join(COLOUR_NAMES)
_OBJ = rf"(?:(?P<{{size}}>small|large) )?(?P<{{colour}}>{_COLOUR})"
_REGION = "|".join(sorted(REGIONS.values(), key=len, reverse=True))
_DIRECTION = "|".join(sorted((phrase for _, phrase in DIRECTIONS.values()), key=len, reverse=True))
_OBJ1 = _OBJ.format(size="size1", colour="colour1")
_OBJ2 = _OBJ.format(size="size2", colour="colour2")
_PATTERNS = {
    "drop": rf"a {_OBJ1} ball drops from the (?P<region>{_REGION})(?P<bounce> and bounces high| and barely bounces| and bounces)",
    "projectile": (rf"a {_OBJ1} ball is thrown (?:(?P<speed>slowly|fast) )?(?P<direction>{_DIRECTION}) "
                   rf"from the (?P<region>{_REGION})(?P<bounce> and bounces high| and barely bounces| and bounces)"),
    "uniform": (rf"seen from above, a {_OBJ1} ball glides (?:(?P<speed>slowly|quickly) )?(?P<direction>{_DIRECTION}) "
                rf"across the ice from the (?P<region>{_REGION})"),
    "collide_at_rest": (rf"seen from above, a {_OBJ1} ball slides (?:(?P<speed>slowly|quickly) )?"
                        rf"(?P<direction>to the left|to the right) into a {_OBJ2} ball at rest and they collide"
                        rf"(?: (?P<bounce>elastically|softly))?"),
    "collide_toward": (rf"seen from above, a {_OBJ1} ball and a {_OBJ2} ball slide toward each other and collide"
                       rf"(?: (?P<bounce>elastically|softly))?"),
    "ramp": rf"a {_OBJ1} ball slides down a (?:(?P<steep>steep|gentle) )?ramp (?P<direction>to the left|to the right)",
    "occlude": (rf"a {_OBJ1} ball rolls (?:(?P<speed>slowly|quickly) )?(?P<direction>to the left|to the right) "
                rf"and passes behind a grey bar"),
}
_COMPILED = {name: re.compile(pattern) for name, pattern in _PATTERNS.items()}
_PHRASE_TO_DIRECTION = {phrase: name for name, (_, phrase) in DIRECTIONS.items()}
_SPEED_WORD = {"slowly": "slow", "fast": "fast", "quickly": "fast"}
_BOUNCE_WORD = {" and bounces high": "bouncy", " and barely bounces": "soft", " and bounces": None,
                "elastically": "elastic", "softly": "soft", None: None}


def parse_caption(caption: str) -> dict | None:
    """Attributes a world caption states (the inverse of make_caption), or None if it is not one."""
    text = " ".join(caption.strip().lower().rstrip(".").split())
    for name, pattern in _COMPILED.items():
        match = pattern.fullmatch(text)
        if match is None:
            continue
        groups = match.groupdict()
        family = name.split("_")[0]
        two = family == "collide"
        colours = [groups["colour1"]] + ([groups["colour2"]] if two else [])
        sizes = [groups.get("size1")] + ([groups.get("size2")] if two else [])
        out: dict[str, Any] = {"family": family, "colours": colours, "count": len(colours)}
        if any(s is not None for s in sizes):
            out["sizes"] = sizes
        if family == "collide":
            out["config"] = "at_rest" if name == "collide_at_rest" else "toward"
        if groups.get("speed"):
            out["speed"] = _SPEED_WORD[groups["speed"]]
        if _BOUNCE_WORD.get(groups.get("bounce")):
            out["bounciness"] = _BOUNCE_WORD[groups["bounce"]]
        if groups.get("steep"):
            out["steepness"] = groups["steep"]
        if groups.get("direction"):
            out["direction"] = _PHRASE_TO_DIRECTION[groups["direction"]]
        if groups.get("region"):
            out["region"] = groups["region"]
        return out
    return None


# ==================================================================== rendering
def _rgb(colour: Sequence[int]) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32)


def _static_scene(scene: dict, size: int, ss: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Supersampled background (with floor band and ramp), occluder mask, and sample coordinates."""
    n = size * ss
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n
    xs = coords[None, :]
    ys = 1.0 - coords[:, None]  # row 0 is the top (y = 1)
    image = np.empty((n, n, 3), dtype=np.float32)
    image[:] = _rgb(BACKGROUND)
    if scene.get("view") == "side":
        image[(ys < FLOOR_Y).repeat(n, axis=1)] = _rgb(FLOOR_COLOUR)
    ramp = scene.get("ramp")
    if ramp:
        slope = math.tan(math.radians(ramp["theta_deg"]))
        horizontal = (1.0 - xs) if ramp["direction"] == "right" else xs
        under = (ys < FLOOR_Y + horizontal * slope) & np.ones((n, n), dtype=bool)
        image[under] = _rgb(FLOOR_COLOUR)
    occluder = scene.get("occluder")
    mask = None
    if occluder:
        mask = (xs >= occluder["x0"]) & (xs < occluder["x1"]) & (ys >= occluder["y0"]) & (ys < occluder["y1"])
    return image, mask, xs, ys


def render_clip(clip: Clip, size: int | None = None) -> np.ndarray:
    """uint8 [F, H, W, 3]: discs drawn over the static scene, the occluder over the discs.

    Each frame re-renders only the pixel box around its discs (supersampled, then box filtered).
    """
    size = int(size or clip.size)
    ss = SUPERSAMPLE
    base, occluder, xs, ys = _static_scene(clip.scene, size, ss)
    static = base.copy()
    if occluder is not None:
        static[occluder] = _rgb(OCCLUDER_COLOUR)
    frames = np.empty((clip.num_frames, size, size, 3), dtype=np.uint8)
    frames[:] = np.clip(np.rint(static.reshape(size, ss, size, ss, 3).mean(axis=(1, 3))), 0, 255).astype(np.uint8)
    palette = np.array([PALETTE[c] for c in COLOUR_NAMES], dtype=np.float32)
    for f in range(clip.num_frames):
        boxes = []
        for k in range(clip.num_objects):
            if not clip.visible[f, k]:
                continue
            (cx, cy), r = clip.positions[f, k], clip.radii[f, k]
            col0, col1 = max(0, int(math.floor((cx - r) * size))), min(size, int(math.ceil((cx + r) * size)))
            row0, row1 = max(0, int(math.floor((1.0 - cy - r) * size))), min(size, int(math.ceil((1.0 - cy + r) * size)))
            if col0 < col1 and row0 < row1:
                boxes.append((k, row0, row1, col0, col1))
        if not boxes:
            continue
        row0, row1 = min(b[1] for b in boxes), max(b[2] for b in boxes)
        col0, col1 = min(b[3] for b in boxes), max(b[4] for b in boxes)
        rows, cols = slice(row0 * ss, row1 * ss), slice(col0 * ss, col1 * ss)
        patch = base[rows, cols].copy()
        for k, *_ in boxes:
            (cx, cy), r = clip.positions[f, k], clip.radii[f, k]
            inside = (xs[:, cols] - cx) ** 2 + (ys[rows, :] - cy) ** 2 < r * r
            patch[inside] = palette[clip.colours[f, k]]
        if occluder is not None:
            patch[occluder[rows, cols]] = _rgb(OCCLUDER_COLOUR)
        h, w = row1 - row0, col1 - col0
        pooled = patch.reshape(h, ss, w, ss, 3).mean(axis=(1, 3))
        frames[f, row0:row1, col0:col1] = np.clip(np.rint(pooled), 0, 255).astype(np.uint8)
    return frames


# ==================================================================== corruptions / impossible twins
def _with(clip: Clip, **changes: Any) -> Clip:
    copy = dataclasses.replace(clip, **changes)
    for name in ("positions", "velocities", "radii", "colours", "visible"):
        if name not in changes:
            setattr(copy, name, getattr(clip, name).copy())
    copy.events = list(changes.get("events", clip.events))
    copy.params = json.loads(json.dumps(changes.get("params", clip.params)))
    return copy


def _resimulate(clip: Clip, physics: dict | None = None, **param_changes: Any) -> Clip:
    params = json.loads(json.dumps(clip.params))
    params.update(param_changes)
    params["physics"] = {**(params.get("physics") or {}), **(physics or {})}
    fresh = simulate_params(params, clip.num_frames, clip.size, clip.split)
    return _with(clip, positions=fresh.positions, velocities=fresh.velocities, events=fresh.events,
                 params=fresh.params, radii=fresh.radii, colours=fresh.colours, visible=fresh.visible)


def _change_frame(clip: Clip, fraction: float = 0.55) -> int:
    return int(round(fraction * (clip.num_frames - 1)))


def _free_colour(clip: Clip) -> int:
    used = set(int(c) for c in clip.colours[0])
    return next(i for i in range(len(COLOUR_NAMES)) if i not in used)


def _mid_flight_frame(clip: Clip, lo: float = 0.3, hi: float = 0.75) -> int:
    """A frame well away from any contact event (teleports should not coincide with a bounce)."""
    event_frames = np.array([e["frame"] for e in clip.events]) if clip.events else np.array([-100.0])
    candidates = range(int(lo * clip.num_frames), int(hi * clip.num_frames))
    return max(candidates, key=lambda f: np.min(np.abs(event_frames - (f - 0.5))))


def corrupt_clip(clip: Clip, kind: str, seed: int = 0) -> Clip:
    """A physically impossible version of `clip` (deterministic). Kinds: CORRUPTION_KINDS."""
    if kind not in CORRUPTION_KINDS:
        raise ValueError(f"unknown corruption {kind!r}; choose from {', '.join(CORRUPTION_KINDS)}")
    out = CORRUPTION_KINDS[kind](clip, seed)
    out.corruption = kind
    return out


def _half_gravity(clip: Clip, seed: int) -> Clip:
    if clip.family == "ramp":
        return _resimulate(clip, {"gravity_scale": 0.5})
    gravity = physics_config(clip.family, clip.params).gravity
    return _resimulate(clip, {"gravity": [gravity[0] * 0.5, gravity[1] * 0.5]})


def _floaty_fall(clip: Clip, seed: int) -> Clip:
    """Sinks at a constant 0.3 units/s like a feather (no acceleration) and settles without bouncing
    (on a ramp: slides down at a constant 0.2 units/s)."""
    if clip.family == "ramp":
        return _resimulate(clip, {"gravity_scale": 0.0, "first_floor_e": 0.0}, v0=-0.2)
    bodies = json.loads(json.dumps(clip.params["bodies"]))
    for body in bodies:
        body["vel"] = [body["vel"][0], -0.3]
    return _resimulate(clip, {"gravity": [0.0, 0.0], "floor_e": 0.0}, bodies=bodies)


def _jitter(clip: Clip, seed: int) -> Clip:
    rng = np.random.default_rng(seed + 1)
    sigma = 0.6 / 64.0  # 0.6 px at 64 px
    out = _with(clip)
    out.positions = clip.positions + rng.normal(0.0, sigma, size=clip.positions.shape)
    return out


def _vanish(clip: Clip, seed: int) -> Clip:
    out = _with(clip)
    out.visible[_change_frame(clip, 0.6):, 0] = False
    return out


def _duplicate(clip: Clip, seed: int) -> Clip:
    """A second disc of the same colour appears beside the first and moves with it."""
    start = _change_frame(clip, 0.6)
    offset = np.zeros(2)
    offset[0] = 0.3 if clip.positions[start, 0, 0] < 0.5 else -0.3
    ghost = clip.positions[:, :1] + offset
    out = _with(clip)
    out.positions = np.concatenate([clip.positions, ghost], axis=1)
    out.velocities = np.concatenate([clip.velocities, clip.velocities[:, :1]], axis=1)
    out.radii = np.concatenate([clip.radii, clip.radii[:, :1]], axis=1)
    out.colours = np.concatenate([clip.colours, clip.colours[:, :1]], axis=1)
    visible = np.zeros((clip.num_frames, 1), dtype=bool)
    visible[start:] = True
    out.visible = np.concatenate([clip.visible, visible], axis=1)
    return out


def _energy_gain(clip: Clip, seed: int) -> Clip:
    """The first bounce returns 15% faster than it arrived (32% more energy)."""
    if clip.family in ("drop", "projectile"):
        return _resimulate(clip, {"first_floor_e": 1.15}, bodies=_energy_gain_start(clip))
    if clip.family == "ramp":
        return _resimulate(clip, {"first_floor_e": 1.15})
    if clip.family == "collide":
        return _resimulate(clip, {"collision_rule": "physical"}, e=1.4)
    return _resimulate_from(clip, _mid_flight_frame(clip), velocity_scale={0: 1.5})  # speeds up on its own


def _energy_gain_start(clip: Clip) -> list[dict]:
    """Start low enough (and not rising) that a 15% faster first rebound stays in the frame."""
    bodies = json.loads(json.dumps(clip.params["bodies"]))
    r = clip.params["radii"][0]
    bodies[0]["pos"][1] = min(bodies[0]["pos"][1], FLOOR_Y + r + (0.93 - FLOOR_Y - 2 * r) / 1.33)
    bodies[0]["vel"][1] = min(bodies[0]["vel"][1], 0.0)
    return bodies


def possible_counterpart(clip: Clip, kind: str) -> Clip:
    """The physical clip an impossible twin of `kind` departs from (same start, same caption).

    Usually `clip` itself; an energy-gain twin of a drop / projectile starts lower (room to rise),
    so its counterpart is the same scene re-simulated from that lower start."""
    if kind == "energy_gain" and clip.family in ("drop", "projectile"):
        return _resimulate(clip, bodies=_energy_gain_start(clip))
    return clip


def _speed_change(clip: Clip, seed: int) -> Clip:
    """Speed jumps by half at the first wall contact (an 'elastic' wall that adds energy)."""
    return _resimulate(clip, {"first_wall_speed_factor": 1.5})


def _colour_change(clip: Clip, seed: int) -> Clip:
    out = _with(clip)
    out.colours[_change_frame(clip):, 0] = _free_colour(clip)
    return out


def _size_change(clip: Clip, seed: int) -> Clip:
    """The first disc shrinks to 0.6 of its radius early in its first flight (from frame 3 or
    halfway to its first contact); the motion from there is re-simulated with the new radius so
    every later contact stays consistent."""
    first_event = min((e["frame"] for e in clip.events if 0 in e["objects"]), default=clip.num_frames / 2)
    frame = int(min(max(3, first_event // 2), clip.num_frames - 2))
    if clip.family == "ramp":
        out = _with(clip)
        out.radii[frame:, 0] *= 0.6
        return out
    return _resimulate_from(clip, frame, radius_scale={0: 0.6})


def _resimulate_from(clip: Clip, frame: int, radius_scale: dict[int, float] | None = None,
                     velocity_scale: dict[int, float] | None = None) -> Clip:
    """Continue the simulation from `frame` with changed radii / velocities (2-D integrator families)."""
    cfg = physics_config(clip.family, clip.params)
    radius_scale, velocity_scale = radius_scale or {}, velocity_scale or {}
    bodies = []
    for k in range(clip.num_objects):
        radius = float(clip.radii[frame, k]) * radius_scale.get(k, 1.0)
        pos, vel = clip.positions[frame, k].copy(), clip.velocities[frame, k] * velocity_scale.get(k, 1.0)
        resting = cfg.floor is not None and abs(pos[1] - (cfg.floor + cfg.floor_offset + clip.radii[frame, k])) < 1e-9 and vel[1] == 0
        if resting:
            pos[1] = cfg.floor + cfg.floor_offset + radius
        bodies.append(_Body(pos, vel, radius, resting))
    positions, velocities, events = integrate(bodies, cfg, clip.num_frames - frame)
    out = _with(clip)
    out.positions[frame:] = positions
    out.velocities[frame:] = velocities
    for k, scale in radius_scale.items():
        out.radii[frame:, k] *= scale
    shifted = [{**e, "t": round(e["t"] + frame * DT, 6), "frame": round(e["frame"] + frame, 4)} for e in events]
    out.events = [e for e in clip.events if e["frame"] <= frame] + shifted
    return out


def _floor_penetration(clip: Clip, seed: int) -> Clip:
    """Bounces 0.05 units (3 px at 64 px) inside the floor band."""
    return _resimulate(clip, {"floor_offset": -0.05})


def _momentum_violation(clip: Clip, seed: int) -> Clip:
    """Each disc bounces back as if off a wall: energy ratio e^2 kept, momentum not conserved."""
    return _resimulate(clip, {"collision_rule": "reverse"})


def _teleport(clip: Clip, seed: int) -> Clip:
    """From a mid-flight frame on, the disc is 0.25 units further toward the centre."""
    frame = _mid_flight_frame(clip)
    out = _with(clip)
    shift = 0.25 if clip.positions[frame, 0, 0] < 0.5 else -0.25
    out.positions[frame:, 0, 0] += shift
    return out


def _gravity_flip(clip: Clip, seed: int) -> Clip:
    """From mid-clip on gravity points up (top-down scenes: a pull appears from nowhere)."""
    frame = _mid_flight_frame(clip)
    if clip.family == "ramp":  # from `frame` on the disc accelerates UP the slope
        flipped = _with(clip)
        pos, vel = clip.positions[frame, 0], clip.velocities[frame, 0]
        theta = math.radians(clip.params["theta_deg"])
        uphill = np.array([-math.cos(theta), math.sin(theta)])
        if clip.params["ramp_direction"] == "left":
            uphill[0] = -uphill[0]
        accel = G * math.sin(theta) * uphill
        for f in range(frame, clip.num_frames):
            tau = (f - frame) * DT
            flipped.positions[f, 0] = pos + vel * tau + 0.5 * accel * tau**2
            flipped.velocities[f, 0] = vel + accel * tau
        return flipped
    return _resimulate(clip, {"gravity_change": [frame, [0.0, G]]})


LATE_REAPPEAR_DELAY = 6  # frames the disc waits behind the occluder


def first_pass_behind(clip: Clip) -> np.ndarray:
    """Frames of the first disc's first pass with its centre behind the occluder (empty without one)."""
    occ = clip.scene.get("occluder")
    if not occ:
        return np.zeros(0, dtype=np.int64)
    xs = clip.positions[:, 0, 0]
    behind = np.nonzero((xs > occ["x0"]) & (xs < occ["x1"]))[0]
    breaks = np.nonzero(np.diff(behind) > 1)[0]
    return behind[:breaks[0] + 1] if len(breaks) else behind


def _late_reappear(clip: Clip, seed: int) -> Clip:
    """Behind the occluder the disc waits 6 frames before going on (reappears late). The wait is in
    its first pass behind the bar: a later pass (after a wall bounce) can run into the clip's end,
    and a disc still hidden when the clip ends shows nothing wrong."""
    out = _with(clip)
    behind = first_pass_behind(clip)
    start = int(behind[len(behind) // 2]) if len(behind) else _change_frame(clip, 0.4)
    delay = LATE_REAPPEAR_DELAY
    for name in ("positions", "velocities"):
        source = getattr(clip, name)
        target = getattr(out, name)
        for f in range(start, clip.num_frames):
            target[f] = source[max(start, f - delay)]
    out.velocities[start:start + delay] = 0.0
    return out


def _freeze(clip: Clip, seed: int) -> Clip:
    out = _with(clip)
    for name in ("positions", "velocities", "radii", "colours", "visible"):
        array = getattr(out, name)
        array[:] = array[:1]
    out.velocities[:] = 0.0
    return out


CORRUPTION_KINDS: dict[str, Callable[[Clip, int], Clip]] = {
    "half_gravity": _half_gravity,
    "floaty_fall": _floaty_fall,
    "jitter": _jitter,
    "vanish": _vanish,
    "duplicate": _duplicate,
    "energy_gain": _energy_gain,
    "speed_change": _speed_change,
    "colour_change": _colour_change,
    "size_change": _size_change,
    "floor_penetration": _floor_penetration,
    "momentum_violation": _momentum_violation,
    "teleport": _teleport,
    "gravity_flip": _gravity_flip,
    "late_reappear": _late_reappear,
    "freeze": _freeze,
}
TWIN_KINDS = ("teleport", "vanish", "gravity_flip", "energy_gain", "colour_change", "size_change")


def impossible_twin(clip: Clip, kind: str) -> Clip:
    """The violation-of-expectation partner of `clip`: same caption and start, one impossible event."""
    if kind not in TWIN_KINDS:
        raise ValueError(f"unknown twin kind {kind!r}; choose from {', '.join(TWIN_KINDS)}")
    return corrupt_clip(clip, kind)


def voe_pairs(n: int, seed: int = 0, split: str = "test", families: Sequence[str] | None = None,
              num_frames: int = DEFAULT_FRAMES, size: int = DEFAULT_SIZE) -> list[tuple[Clip, Clip, str]]:
    """n (possible clip, impossible twin, kind) pairs for --voe. Families and kinds both rotate with
    the index (kinds shifted by one per round of families), so any len(TWIN_KINDS) consecutive pairs
    hold every kind and len(families) * len(TWIN_KINDS) pairs hold every (family, kind) pair."""
    families = list(families or FAMILIES)
    pairs = []
    for index in range(n):
        family = families[index % len(families)]
        clip = simulate_clip(family, clip_rng(seed, split, index), split, num_frames, size)
        kind = TWIN_KINDS[(index + index // len(families)) % len(TWIN_KINDS)]
        pairs.append((possible_counterpart(clip, kind), impossible_twin(clip, kind), kind))
    return pairs


# ==================================================================== writing a folder
def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of clip `index`: independent per (seed, split, index), so any clip is reproducible alone."""
    return np.random.default_rng([int(seed), SPLITS.index(split), int(index), 0x4C614D6F])


def clip_name(split: str, index: int, family: str) -> str:
    return f"{split}_{index:05d}_{family}"


@dataclass
class WorldSummary:
    out_dir: str
    n: int
    split: str
    seed: int
    num_frames: int
    size: int
    per_family: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def parse_families(families: str | Sequence[str] | None) -> list[str]:
    if families is None:
        return list(FAMILIES)
    if isinstance(families, str):
        families = [f for f in families.replace(" ", "").split(",") if f]
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise ValueError(f"unknown families {bad or families}; choose from {', '.join(FAMILIES)}")
    return list(families)


def _write_one_clip(out: Path, index: int, family: str, split: str, seed: int, num_frames: int, size: int) -> tuple[str, str]:
    """Simulate, render and write clip `index`; (file name, caption)."""
    from lamo_cli.data.mp4 import write_mp4
    from lamo_cli.fileio import write_json, write_text

    clip = simulate_clip(family, clip_rng(seed, split, index), split, num_frames, size)
    name = clip_name(split, index, family)
    write_mp4(out / f"{name}.mp4", render_clip(clip), fps=FPS)
    write_text(out / f"{name}.txt", clip.caption + "\n")
    write_json(out / f"{name}.state.json", clip.state_dict())
    return f"{name}.mp4", clip.caption


def _write_clip_range(args: tuple) -> list[tuple[str, str]]:
    out, indices, families, split, seed, num_frames, size = args
    return [_write_one_clip(out, i, families[i % len(families)], split, seed, num_frames, size) for i in indices]


def default_world_workers(n: int) -> int:
    """Processes for writing n clips: one for small folders (no start-up cost), else every core (up to 16)."""
    return 1 if n < 64 else max(1, min(16, os.cpu_count() or 1))


def write_world(out_dir: str | os.PathLike, n: int, split: str = "train", seed: int = 0,
                families: str | Sequence[str] | None = None, num_frames: int = DEFAULT_FRAMES,
                size: int = DEFAULT_SIZE, progress: Callable[[int], None] | None = None,
                workers: int | None = None) -> WorldSummary:
    """Write n clips (families in rotation) as NAME.mp4 + NAME.txt + NAME.state.json and a
    metadata.jsonl listing (path, caption). Deterministic in (seed, split, index), so the folder is
    the same whatever the number of `workers` (processes; None: `default_world_workers`)."""
    from lamo_cli.fileio import write_text

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    chosen = parse_families(families)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = WorldSummary(str(out), n, split, seed, num_frames, size, {f: 0 for f in chosen})
    workers = default_world_workers(n) if workers is None else max(1, int(workers))
    written: list[tuple[str, str]] = []
    if workers == 1:
        for index in range(n):
            written.append(_write_one_clip(out, index, chosen[index % len(chosen)], split, seed, num_frames, size))
            if progress is not None:
                progress(index + 1)
    else:
        import concurrent.futures
        import multiprocessing

        chunk = max(1, min(16, n // (workers * 4)))  # a few chunks per process keep them all busy
        jobs = [(out, range(start, min(n, start + chunk)), chosen, split, seed, num_frames, size) for start in range(0, n, chunk)]
        # fork: the workers need no re-import of the caller's modules (torch may be loaded)
        context = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            for part in pool.map(_write_clip_range, jobs):  # in order: metadata lists clips by index
                written.extend(part)
                if progress is not None:
                    progress(len(written))
    for index, (file, caption) in enumerate(written):
        summary.per_family[chosen[index % len(chosen)]] += 1
        summary.files.append(file)
    lines = [json.dumps({"path": file, "caption": caption}) for file, caption in written]
    write_text(out / "metadata.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    return summary
