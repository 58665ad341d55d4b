"""Procedural indoor scenes, ray-cast in numpy: what the synthetic dataset (dense/data/synthetic.py)
renders, needing no download.

`render_scene(rng)` builds a room (floor, four
walls, ceiling, paintings on the walls), a few boxes, spheres and cylinders standing on the floor,
and one or two point lights with Lambertian shading and hard shadows. One primary ray per pixel gives
RGB, metric depth (z-depth along the optical axis, about 0.8–9.5 m) and per-pixel class labels.

Why these choices: every class has its own colour family and texture (wooden or tiled floor, pale
striped walls, tiled white ceiling, warm crates with dark edges, cool banded spheres, green/purple
striped cylinders, colourful framed paintings), so a frozen-feature probe has a real signal to
learn; depth comes from exact ray-plane/box/sphere/cylinder intersections, so it is consistent with
the pinhole camera (the tests unproject it back onto the room's planes).

Camera convention: x right, y up, z forward (optical axis); rays r = R @ (x, y, 1), so the ray
parameter t at a hit *is* the z-depth.

Speed: vectors are stored as 3×N float32 arrays (one contiguous row per coordinate) and exact
intersections run only on rays that pass an object's bounding sphere (numpy is slower on N×3
float64 layouts). Shadow rays start at the light, so every ray bundle has a single origin. No step
calls a BLAS matrix product (a loader worker runs numpy on one thread: dense.data.datamodule), and
most of the time goes into numpy passes over image-sized arrays: about 10 ms a scene at 224×224 and
30–40 ms at 416×544 on one core (benchmarks/BENCHMARKS.md, "Data loading").
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

# Bump when render_scene draws other images for the same rng: the synthetic dataset's fingerprint (the
# feature cache's key) holds it. 2: uniform sensor noise (issue 22).
RENDERER_VERSION = 2

SYNTHETIC_CLASSES = ("floor", "wall", "ceiling", "box", "sphere", "cylinder", "painting")
FLOOR, WALL, CEILING, BOX, SPHERE, CYLINDER, PAINTING = range(len(SYNTHETIC_CLASSES))

_EPS = 1e-4
_F32 = np.float32


def _vec(*xyz) -> np.ndarray:
    return np.array(xyz, _F32)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), _F32)[:, None]  # 3×1, broadcasts over pixels


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def _hash01(i: np.ndarray, salt: float) -> np.ndarray:
    """Cheap deterministic pseudo-random value in [0, 1) per integer (per plank tones)."""
    return _frac(np.abs(np.sin(i * _F32(12.9898) + _F32(salt)) * _F32(43758.5453)))


def _rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], _F32)


def _rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]], _F32)


def _yaw_to_local(yaw: float, v: np.ndarray) -> np.ndarray:
    """_rot_y(yaw).T @ v written out (v: 3 or 3×M), as every product of the renderer: numpy's BLAS
    would run a 3×3 matrix product on a thread per core."""
    c, s = _F32(np.cos(yaw)), _F32(np.sin(yaw))
    return np.stack([c * v[0] - s * v[2], v[1], s * v[0] + c * v[2]])


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


# --------------------------------------------------------------------------- primitives
# intersect(o, d): o a single origin (3,), d 3×M unnormalised directions → t (M,), inf on a miss.
# normal(p) / albedo(p): p 3×K hit points → 3×K.


@dataclass
class Sphere:
    center: np.ndarray
    radius: float
    color: np.ndarray
    bands: float
    label: ClassVar[int] = SPHERE

    @property
    def bound(self):
        return self.center, self.radius

    def intersect(self, o, d):
        oc = o - self.center
        a = _dot(d, d)
        b = 2.0 * _dot(oc, d)
        c = float(oc @ oc) - self.radius**2
        disc = b * b - 4.0 * a * c
        t = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
        return np.where((disc > 0) & (t > _EPS), t, np.inf)

    def normal(self, p):
        return (p - self.center[:, None]) / self.radius

    def albedo(self, p):
        latitude = np.arcsin(np.clip((p[1] - self.center[1]) / self.radius, -1, 1))
        return self.color * (1.0 + 0.2 * np.sign(np.sin(latitude * self.bands)))


@dataclass
class Box:
    center: np.ndarray
    half: np.ndarray  # half extents in the box frame
    yaw: float
    color: np.ndarray
    label: ClassVar[int] = BOX

    @property
    def bound(self):
        return self.center, float(np.linalg.norm(self.half))

    def intersect(self, o, d):
        """Slab test in the box frame."""
        ol, dl = _yaw_to_local(self.yaw, o - self.center), _yaw_to_local(self.yaw, d)
        half = self.half[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (-half - ol[:, None]) / dl, (half - ol[:, None]) / dl
        lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
        t_near = np.maximum(np.maximum(lo[0], lo[1]), lo[2])
        t_far = np.minimum(np.minimum(hi[0], hi[1]), hi[2])
        return np.where((t_near <= t_far) & (t_near > _EPS), t_near, np.inf)

    def _local_ratio(self, p):
        local = _yaw_to_local(self.yaw, p - self.center[:, None])
        return local, np.abs(local) / self.half[:, None]

    def normal(self, p):
        local, ratio = self._local_ratio(p)
        axis = ratio.argmax(axis=0)
        cols = np.arange(p.shape[1])
        n_local = np.zeros_like(p)
        n_local[axis, cols] = np.sign(local[axis, cols])
        return _yaw_to_local(-self.yaw, n_local)

    def albedo(self, p):
        _, ratio = self._local_ratio(p)
        on_edge = (ratio > 0.86).sum(axis=0) >= 2  # crate look: darker bands along the edges
        return self.color * np.where(on_edge, _F32(0.5), _F32(1.0))


@dataclass
class Cylinder:
    base: np.ndarray  # centre of the bottom disc (on the floor)
    radius: float
    height: float
    color: np.ndarray
    stripes: int
    label: ClassVar[int] = CYLINDER

    @property
    def bound(self):
        return self.base + _vec(0.0, self.height / 2, 0.0), float(np.hypot(self.radius, self.height / 2))

    def intersect(self, o, d):
        ox, oy, oz = (float(v) for v in o - self.base)
        dx, dy, dz = d
        a = dx * dx + dz * dz
        b = 2.0 * (ox * dx + oz * dz)
        c = ox * ox + oz * oz - self.radius**2
        disc = b * b - 4.0 * a * c
        with np.errstate(divide="ignore", invalid="ignore"):
            t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
            y = oy + t_side * dy
            t_side = np.where((disc > 0) & (t_side > _EPS) & (y >= 0) & (y <= self.height), t_side, np.inf)
            t_cap = (self.height - oy) / dy
            cx, cz = ox + t_cap * dx, oz + t_cap * dz
            t_cap = np.where((t_cap > _EPS) & (cx * cx + cz * cz <= self.radius**2), t_cap, np.inf)
        return np.minimum(t_side, t_cap)

    def normal(self, p):
        rel = p - self.base[:, None]
        on_cap = rel[1] > self.height - 1e-3
        radial = rel * _vec(1.0, 0.0, 1.0)[:, None] / self.radius
        return np.where(on_cap, _vec(0.0, 1.0, 0.0)[:, None], radial)

    def albedo(self, p):
        rel = p - self.base[:, None]
        stripes = np.sign(np.sin(np.arctan2(rel[2], rel[0]) * self.stripes))
        on_cap = rel[1] > self.height - 1e-3
        return self.color * np.where(on_cap, _F32(1.25), 1.0 + 0.18 * stripes)


@dataclass
class Room:
    """The inside of an axis-aligned box: x ∈ ±half_width, y ∈ [0, height], z ∈ [z_back, z_far]."""

    half_width: float
    height: float
    z_back: float
    z_far: float
    floor_color: np.ndarray
    floor_tiles: bool
    floor_period: float
    wall_color: np.ndarray
    wall_stripe: float
    ceiling_color: np.ndarray
    salt: float

    def intersect(self, o, d):
        """Exit distance, label (floor / wall / ceiling) and inward normal of every ray."""
        lo = (-self.half_width, 0.0, self.z_back)
        hi = (self.half_width, self.height, self.z_far)
        with np.errstate(divide="ignore", invalid="ignore"):
            # the wall each ray moves towards, per axis; a ray parallel to an axis never meets its walls
            tx, ty, tz = (
                np.where(d[k] > 0, (hi[k] - o[k]) / d[k], np.where(d[k] < 0, (lo[k] - o[k]) / d[k], np.inf))
                for k in range(3)
            )
        t = np.minimum(np.minimum(tx, ty), tz)
        on_x, on_y = tx == t, (ty == t) & (tx != t)
        label = np.where(on_y, np.where(d[1] > 0, CEILING, FLOOR), WALL)
        normal = np.zeros_like(d)
        normal[0] = np.where(on_x, -np.sign(d[0]), 0.0)
        normal[1] = np.where(on_y, -np.sign(d[1]), 0.0)
        normal[2] = np.where(on_x | on_y, 0.0, -np.sign(d[2]))
        return t, label, normal

    def albedo(self, p, label):
        out = np.empty(p.shape, _F32)
        x, y, z = p

        f = label == FLOOR
        u, v = x[f] / self.floor_period, z[f] / self.floor_period
        if self.floor_tiles:  # checkerboard tiles with dark grout
            tone = np.where((np.floor(u) + np.floor(v)) % 2 == 0, _F32(1.0), _F32(0.72))
            factor = np.where((_frac(u) < 0.04) | (_frac(v) < 0.04), _F32(0.55), tone)
        else:  # wooden planks running along z: one tone per plank, seams, grain
            plank = np.floor(u)
            tone = 0.8 + 0.35 * _hash01(plank, self.salt)
            grain = 1.0 + 0.07 * np.sin(z[f] * 23.0 + plank * 2.1 + 2.5 * np.sin(x[f] * 9.0))
            factor = np.where(_frac(u) < 0.06, _F32(0.45), tone * grain)
        out[:, f] = self.floor_color * factor

        w = label == WALL
        on_side = np.abs(np.abs(x[w]) - self.half_width) < 1e-3
        along = np.where(on_side, z[w], x[w])  # the coordinate running along the wall
        out[:, w] = self.wall_color * (1.0 + 0.06 * np.sign(np.sin(along * (2 * np.pi / self.wall_stripe))))

        c = label == CEILING
        grid = (_frac(x[c] / 0.6) < 0.03) | (_frac(z[c] / 0.6) < 0.03)
        out[:, c] = self.ceiling_color * np.where(grid, _F32(0.8), _F32(1.0))
        return out


@dataclass
class Painting:
    """A framed rectangle on a wall: its own class and texture, no depth of its own."""

    wall: str  # "left", "right" or "front"
    u_range: tuple[float, float]  # along the wall (z for side walls, x for the front wall)
    y_range: tuple[float, float]
    freqs: np.ndarray  # 3×2: per colour channel, spatial frequencies along u and y
    phases: np.ndarray  # 3×1
    frame_color: np.ndarray

    def _uv(self, p):
        return (p[2] if self.wall != "front" else p[0]), p[1]

    def covers(self, p, room: Room):
        x, _, z = p
        on_wall = {
            "left": np.abs(x + room.half_width) < 1e-3,
            "right": np.abs(x - room.half_width) < 1e-3,
            "front": np.abs(z - room.z_far) < 1e-3,
        }[self.wall]
        u, v = self._uv(p)
        return (
            on_wall
            & (u >= self.u_range[0])
            & (u <= self.u_range[1])
            & (v >= self.y_range[0])
            & (v <= self.y_range[1])
        )

    def albedo(self, p):
        u, v = self._uv(p)
        rgb = 0.5 + 0.45 * np.sin(self.freqs[:, :1] * u + self.freqs[:, 1:] * v + self.phases)
        margin = np.minimum.reduce(
            [u - self.u_range[0], self.u_range[1] - u, v - self.y_range[0], self.y_range[1] - v]
        )
        return np.where(margin < 0.05, self.frame_color, rgb).astype(_F32)


def ray_hits(obj, origin: np.ndarray, d: np.ndarray, dd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ray indices, t) of the rays from `origin` along d (3×M, dd = |d|²) that hit `obj`.

    The exact intersection runs only on rays passing the object's bounding sphere: most rays miss
    most objects."""
    center, radius = obj.bound
    oc = center - origin
    along, oc2, r2 = _dot(oc, d), float(oc @ oc), radius * radius
    # squared ray-to-centre distance ≤ r², and the sphere not entirely behind the origin
    near = (oc2 * dd - along * along <= r2 * dd) & ((along > 0) | (oc2 <= r2))
    idx = np.flatnonzero(near)
    t = obj.intersect(origin, d[:, idx])
    hit = np.isfinite(t)
    return idx[hit], t[hit]


# --------------------------------------------------------------------------- scene


@dataclass
class Scene:
    image: np.ndarray  # uint8 H×W×3
    depth: np.ndarray  # float32 H×W metres (z-depth)
    mask: np.ndarray  # uint8 H×W class ids
    K: np.ndarray  # 3×3 intrinsics (pixel centres at +0.5, image y down)
    R: np.ndarray  # 3×3 camera-to-world rotation (camera x right, y up, z forward)
    origin: np.ndarray  # camera centre in the world
    room: Room


def camera_rays(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """3×H×W camera-frame directions with z = 1 (y up), through the pixel centres."""
    u = (np.arange(width, dtype=_F32) + 0.5 - K[0, 2]) / K[0, 0]
    v = -(np.arange(height, dtype=_F32) + 0.5 - K[1, 2]) / K[1, 1]
    rays = np.empty((3, height, width), _F32)
    rays[0], rays[1], rays[2] = u[None, :], v[:, None], 1.0
    return rays


def _sample_room(rng: np.random.Generator) -> Room:
    wooden = rng.random() < 0.6
    floor_color = (
        _hsv(rng.uniform(0.05, 0.1), rng.uniform(0.45, 0.7), rng.uniform(0.45, 0.7))
        if wooden
        else _hsv(rng.uniform(0.08, 0.15), rng.uniform(0.05, 0.25), rng.uniform(0.55, 0.75))
    )
    return Room(
        half_width=rng.uniform(2.0, 3.3),
        height=rng.uniform(2.5, 3.1),
        z_back=-1.0,
        z_far=rng.uniform(4.5, 7.2),
        floor_color=floor_color,
        floor_tiles=not wooden,
        floor_period=rng.uniform(0.12, 0.25) if wooden else rng.uniform(0.4, 0.7),
        wall_color=_hsv(rng.uniform(0, 1), rng.uniform(0.05, 0.22), rng.uniform(0.72, 0.9)),
        wall_stripe=rng.uniform(0.15, 0.4),
        ceiling_color=_hsv(0.1, rng.uniform(0.0, 0.05), rng.uniform(0.8, 0.9)),
        salt=rng.uniform(0, 100),
    )


def _sample_objects(rng: np.random.Generator, room: Room) -> list:
    objects = []
    n_boxes, n_spheres, n_cylinders = rng.integers(1, 4), rng.integers(0, 3), rng.integers(0, 3)
    z_lo = 1.6  # keeps every object ≥ ~1 m in front of the camera (at z = 0)

    def place(extent: float) -> tuple[float, float]:
        x = rng.uniform(-room.half_width + extent + 0.05, room.half_width - extent - 0.05)
        z = rng.uniform(z_lo + extent, room.z_far - extent - 0.05)
        return x, z

    for _ in range(n_boxes):
        half = rng.uniform([0.2, 0.15, 0.2], [0.55, 0.6, 0.55]).astype(_F32)
        x, z = place(float(np.hypot(half[0], half[2])))
        color = _hsv(rng.uniform(-0.02, 0.14), rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.9))  # warm
        objects.append(Box(_vec(x, half[1], z), half, rng.uniform(0, np.pi / 2), color))
    for _ in range(n_spheres):
        r = rng.uniform(0.2, 0.5)
        x, z = place(r)
        y = r if rng.random() < 0.7 else rng.uniform(r, 1.6)  # mostly resting on the floor
        color = _hsv(rng.uniform(0.5, 0.68), rng.uniform(0.6, 0.95), rng.uniform(0.6, 0.9))  # cool
        objects.append(Sphere(_vec(x, y, z), r, color, rng.uniform(6, 14)))
    for _ in range(n_cylinders):
        r = rng.uniform(0.12, 0.35)
        x, z = place(r)
        hue = rng.uniform(0.25, 0.38) if rng.random() < 0.5 else rng.uniform(0.75, 0.88)  # green / purple
        color = _hsv(hue, rng.uniform(0.4, 0.75), rng.uniform(0.5, 0.8))
        objects.append(Cylinder(_vec(x, 0.0, z), r, rng.uniform(0.4, 1.8), color, int(rng.integers(4, 10))))
    return objects


def _sample_paintings(rng: np.random.Generator, room: Room) -> list[Painting]:
    paintings = []
    for _ in range(rng.integers(0, 3)):
        wall = ("left", "right", "front")[rng.integers(0, 3)]
        w, h = rng.uniform(0.6, 1.5), rng.uniform(0.4, 0.9)
        lo, hi = (
            (1.0, room.z_far - 0.3) if wall != "front" else (-room.half_width + 0.2, room.half_width - 0.2)
        )
        u0 = rng.uniform(lo, max(lo, hi - w))
        y0 = rng.uniform(1.0, room.height - h - 0.15)
        paintings.append(
            Painting(
                wall,
                (u0, u0 + w),
                (y0, y0 + h),
                freqs=rng.uniform(-14, 14, size=(3, 2)).astype(_F32),
                phases=rng.uniform(0, 2 * np.pi, size=(3, 1)).astype(_F32),
                frame_color=_hsv(rng.uniform(0.05, 0.1), 0.6, rng.uniform(0.15, 0.35)),
            )
        )
    return paintings


def render_scene(
    rng: np.random.Generator, height: int = 224, width: int = 224, shadows: bool = True
) -> Scene:
    """Sample and ray-cast one scene; all randomness comes from `rng`."""
    room = _sample_room(rng)
    objects = _sample_objects(rng, room)
    paintings = _sample_paintings(rng, room)
    # Camera: standing height, a slightly downward look, modest yaw, horizontal fov 55–70°.
    origin = _vec(rng.uniform(-room.half_width + 0.8, room.half_width - 0.8), rng.uniform(1.1, 1.7), 0.0)
    R = _rot_y(np.radians(rng.uniform(-20, 20))) @ _rot_x(np.radians(rng.uniform(-22, -3)))
    f = (width / 2) / np.tan(np.radians(rng.uniform(55, 70)) / 2)
    K = np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    lights = [
        (
            _vec(
                rng.uniform(-room.half_width + 0.5, room.half_width - 0.5),
                room.height - 0.25,
                rng.uniform(0.5, room.z_far - 0.5),
            ),
            rng.uniform(0.7, 1.1),
        )
        for _ in range(rng.integers(1, 3))
    ]

    # Primary rays: the nearest of the room's exit point and every object hit. The ray of pixel
    # (row, col) is R @ (u[col], v[row], 1) (camera_rays' pixel centres), built from a row and a column.
    u = (np.arange(width, dtype=_F32) + _F32(0.5) - _F32(K[0, 2])) / _F32(K[0, 0])
    v = -(np.arange(height, dtype=_F32) + _F32(0.5) - _F32(K[1, 2])) / _F32(K[1, 1])
    d = np.empty((3, height, width), _F32)
    for k in range(3):
        np.add((R[k, 1] * v + R[k, 2])[:, None], (R[k, 0] * u)[None, :], out=d[k])
    d = d.reshape(3, -1)
    t, label, normal = room.intersect(origin, d)
    hit_object = np.full(t.shape, -1)
    dd = _dot(d, d)
    for k, obj in enumerate(objects):
        idx, t_obj = ray_hits(obj, origin, d, dd)
        closer = t_obj < t[idx]
        idx = idx[closer]
        t[idx], hit_object[idx], label[idx] = t_obj[closer], k, obj.label
    p = origin[:, None] + t * d

    albedo = room.albedo(p, label)
    for painting in paintings:
        on = (label == WALL) & painting.covers(p, room)
        label[on] = PAINTING
        albedo[:, on] = painting.albedo(p[:, on])
    for k, obj in enumerate(objects):
        sel = np.flatnonzero(hit_object == k)
        if sel.size:
            normal[:, sel] = obj.normal(p[:, sel])
            albedo[:, sel] = obj.albedo(p[:, sel])

    shading = np.full(t.shape, 0.28, _F32)  # ambient
    for light, intensity in lights:
        from_light = p - light[:, None]
        dist2 = _dot(from_light, from_light)
        lambert = np.maximum(-_dot(normal, from_light) / np.sqrt(dist2), 0.0)
        if shadows:
            # Shadow rays from the light to every hit point: an object hit before t = 1 blocks the light.
            for obj in objects:
                idx, t_obj = ray_hits(obj, light, from_light, dist2)
                lambert[idx[t_obj < 0.999]] = 0.0
        # inverse-square-like falloff, capped within 1 m so the ceiling above a light does not blow out
        shading += intensity * lambert * 3.0 / (1.0 + 0.35 * np.maximum(dist2, 1.0))

    # Soft highlight roll-off (keeps texture near lights), then sensor noise: one uniform draw per pixel
    # of standard deviation 0.012 (uniform bytes are ten times cheaper to draw than normal floats), and
    # each channel rounded straight into the H×W×3 image.
    tone = 255.0 * (1.4 * shading / (1.0 + 0.4 * shading))
    noise = rng.integers(-128, 128, t.shape, dtype=np.int8) * _F32(255 * 0.012 * np.sqrt(12) / 256) + _F32(
        0.5
    )
    image = np.empty((height, width, 3), np.uint8)
    for c in range(3):
        channel = albedo[c] * tone
        channel += noise
        image[..., c] = np.clip(channel, 0.0, 255.0).reshape(height, width)
    return Scene(
        image=image,
        depth=t.reshape(height, width).astype(_F32),
        mask=label.reshape(height, width).astype(np.uint8),
        K=K,
        R=R.astype(np.float64),
        origin=origin.astype(np.float64),
        room=room,
    )
