"""A per-study analytic phantom of the lumbar spine, evaluated at any patient position (mm, LPS).

The phantom lives in a body frame (x to the patient's left, y posterior, z superior: the same handedness as
DICOM's LPS) that is placed in the patient frame by a small rotation and a translation. The spine follows a
lordotic arc in the y-z plane: a circle of radius `radius` whose centre lies behind the spine, so a point's
spine coordinates are closed-form (no search): `s`, the arc length down the vertebral-body centreline from
the top of L1, and `w`, the offset behind that centreline (x stays). Every structure is a soft-edged shape in
(x, w, s), painted in order (later shapes cover earlier ones), so any slice plane, sagittal or oblique axial,
sees the same anatomy.

Severity is anatomy (with `narrowing`, a fraction that rises smoothly with the latent severity):
    spinal canal stenosis       the dural sac (CSF) is pinched front-to-back at the disc (disc bulge in
                                front, ligament behind), and a little in width;
    neural foraminal narrowing  the fat-filled foramen behind the disc on that side shrinks around its root;
    subarticular stenosis       the lateral recess of the sac on that side shrinks and the sac's half-width
                                on that side narrows.
Patient-to-patient and level-to-level sizes vary by about 10 %, so neighbouring grades overlap in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation
from scipy.special import ndtr

from lumbar.core.constants import CONDITIONS, LEVELS

#: Tissue classes the intensity model knows.
TISSUES: tuple[str, ...] = (
    "fat",
    "muscle",
    "viscera",
    "marrow",
    "posterior",
    "cortex",
    "annulus",
    "nucleus",
    "csf",
    "root",
)

#: Relative intensity of each tissue per sequence (CSF bright on T2, dark on T1; fat bright on T1 and T2,
#: dark on fat-suppressed STIR). Each study scales these by its own contrast jitter.
CONTRAST: dict[str, dict[str, float]] = {
    "T1": {
        "fat": 1.0,
        "muscle": 0.32,
        "viscera": 0.45,
        "marrow": 0.72,
        "posterior": 0.55,
        "cortex": 0.08,
        "annulus": 0.33,
        "nucleus": 0.42,
        "csf": 0.12,
        "root": 0.30,
    },
    "T2": {
        "fat": 0.78,
        "muscle": 0.22,
        "viscera": 0.48,
        "marrow": 0.48,
        "posterior": 0.33,
        "cortex": 0.05,
        "annulus": 0.20,
        "nucleus": 0.95,
        "csf": 1.0,
        "root": 0.22,
    },
    "STIR": {
        "fat": 0.08,
        "muscle": 0.24,
        "viscera": 0.45,
        "marrow": 0.20,
        "posterior": 0.16,
        "cortex": 0.05,
        "annulus": 0.20,
        "nucleus": 0.90,
        "csf": 1.0,
        "root": 0.22,
    },
}

#: Names of the vertebral segments top to bottom: T12 above L1 so the image is not cut at L1, S1 the sacrum.
VERTEBRAE: tuple[str, ...] = ("T12", "L1", "L2", "L3", "L4", "L5", "S1")

#: Largest narrowing (fraction of the normal size lost) and the severity where half of it is reached.
NARROWING_MAX = 0.85
NARROWING_MID = 0.5
NARROWING_WIDTH = 0.6

#: Plane waves summed into the abdomen's texture.
TEXTURE_WAVES = 6

#: Half-extent of a foramen across sagittal slices (mm): it shows on two or three of them.
FORAMEN_HALF_X = 4.5


def narrowing(severity: np.ndarray) -> np.ndarray:
    """Fraction of a structure's size lost at a latent severity (smooth, from ~0 to NARROWING_MAX)."""
    return NARROWING_MAX * ndtr((np.asarray(severity, float) - NARROWING_MID) / NARROWING_WIDTH)


def _ramp(distance: np.ndarray, edge: float) -> np.ndarray:
    """Soft occupancy from a signed distance (mm, > 0 inside) over an edge `edge` mm wide."""
    return np.clip(distance * np.float32(1.0 / edge) + np.float32(0.5), 0.0, 1.0)


def _ellipse_distance(u: np.ndarray, v: np.ndarray, a, b, power: int = 2) -> np.ndarray:
    """Approximate signed distance (mm, > 0 inside) to an ellipse (power 2) or a rounded box (power 4)."""
    q = (u / a) ** 2 + (v / b) ** 2 if power == 2 else (u / a) ** 4 + (v / b) ** 4
    rho = np.sqrt(q) if power == 2 else np.sqrt(np.sqrt(q))
    return (1.0 - rho) * np.minimum(a, b)


@dataclass
class Phantom:
    """One study's anatomy. Lengths in mm; per-level arrays run L1/L2 .. L5/S1; sides are (left, right).

    Attributes:
        rotation: (3, 3) body -> patient rotation (columns are the body axes in LPS).
        origin: (3,) patient position of the body frame's origin (the apex of the lordotic arc).
        radius: radius of the lordotic arc.
        s_apex: arc length from the top of L1 to the apex.
        edges: (14,) arc lengths of the segment boundaries, top of T12 to the bottom of S1 (body, disc, ...).
        body_half: (7, 2) half-width and half-depth of each vertebral body.
        sac_half_width, sac_depth: the dural sac's normal half-width and front-to-back depth.
        epidural: gap between the body's back wall and the sac.
        lamina: thickness of the bone behind the canal.
        foramen_x: lateral offset of the foramina from the midline.
        foramen_half: (2,) normal half-depth (w) and half-height (s) of a foramen.
        recess_half: (2,) normal half-width (x) and half-depth (w) of a lateral recess.
        level_scale: (5,) per-level size factor of canal, foramina and recesses (the patient's own anatomy).
        narrowing: (25,) size lost per target (train.csv column order).
        degeneration: (5,) disc degeneration per level in [0, 1] (darker, thinner disc).
        outline: (4,) body outline: half-width, half-depth, centre y, subcutaneous fat thickness.
        contrast_jitter: (n_tissues,) multiplicative factor per tissue.
        texture: (TEXTURE_WAVES, 4) plane waves (kx, ky, kz, phase) modulating the abdomen.
    """

    rotation: np.ndarray
    origin: np.ndarray
    radius: float
    s_apex: float
    edges: np.ndarray
    body_half: np.ndarray
    sac_half_width: float
    sac_depth: float
    epidural: float
    lamina: float
    foramen_x: float
    foramen_half: np.ndarray
    recess_half: np.ndarray
    level_scale: np.ndarray
    narrowing: np.ndarray
    degeneration: np.ndarray
    outline: np.ndarray
    contrast_jitter: np.ndarray
    texture: np.ndarray

    # ----------------------------------------------------------------------------------------- frames
    def to_body(self, points: np.ndarray) -> np.ndarray:
        """Patient (..., 3) -> body frame (..., 3), in the points' float precision."""
        points = np.asarray(points)
        dtype = points.dtype if points.dtype in (np.float32, np.float64) else np.float64
        # einsum: numpy's matmul is several times slower for an (N, 3) x (3, 3) product.
        return np.einsum("...j,jk->...k", points - self.origin.astype(dtype), self.rotation.astype(dtype))

    def to_patient(self, points: np.ndarray) -> np.ndarray:
        """Body frame (..., 3) -> patient (..., 3)."""
        return np.asarray(points, float) @ self.rotation.T + self.origin

    def spine_coordinates(self, body: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Body-frame points -> (x, w, s): lateral, behind the body centreline, arc length down from L1."""
        x, y, z = body[..., 0], body[..., 1], body[..., 2]
        radius = body.dtype.type(self.radius)
        r = np.hypot(y - radius, z)
        psi = np.arctan2(z, radius - y)
        return x, radius - r, body.dtype.type(self.s_apex) - radius * psi

    def body_point(self, x: float, w: float, s: float) -> np.ndarray:
        """Spine coordinates -> body-frame point (the inverse of `spine_coordinates`)."""
        psi = (self.s_apex - s) / self.radius
        r = self.radius - w
        return np.array([x, self.radius - r * np.cos(psi), r * np.sin(psi)])

    def tangent(self, s: float) -> np.ndarray:
        """Unit vector along the spine, pointing superior, at arc length s (patient frame)."""
        psi = (self.s_apex - s) / self.radius
        return self.rotation @ np.array([0.0, np.sin(psi), np.cos(psi)])

    # ----------------------------------------------------------------------------------------- levels
    @property
    def disc_centres_s(self) -> np.ndarray:
        """(5,) arc length of the disc mid-planes L1/L2 .. L5/S1."""
        return 0.5 * (self.edges[3:13:2] + self.edges[4:14:2])

    @property
    def disc_heights(self) -> np.ndarray:
        """(5,) disc heights L1/L2 .. L5/S1."""
        return self.edges[4:14:2] - self.edges[3:13:2]

    def narrowing_of(self, condition: str) -> np.ndarray:
        """(5,) size lost per level for one condition."""
        i = CONDITIONS.index(condition) * len(LEVELS)
        return self.narrowing[i : i + len(LEVELS)]

    def level_shapes(self) -> dict[str, np.ndarray]:
        """Sizes and places of the per-level structures at their disc's mid-plane, as (5,) or (2, 5) arrays.

        Keys: `sac_front` (w of the sac's normal front wall), `sac_depth`, `n_spinal`; per side (left, right):
        `recess_x`, `recess_hx`, `recess_hw`, `foramen_w`, `foramen_s`, `foramen_hw`, `foramen_hs`, `root_s`.
        """
        scale = self.level_scale
        sides = ("left", "right")
        n_sub = np.stack([self.narrowing_of(f"{side}_subarticular_stenosis") for side in sides])
        n_for = np.stack([self.narrowing_of(f"{side}_neural_foraminal_narrowing") for side in sides])
        back_wall = self.body_half[1:6, 1]
        fw0, fs0 = self.foramen_half[0] * scale, self.foramen_half[1] * scale
        root_s = self.disc_centres_s - 0.5 * self.disc_heights - 2.0 - 0.5 * fs0
        foramen_hs = fs0 * (1 - 0.5 * n_for)
        return {
            "sac_front": back_wall + self.epidural,
            "sac_depth": self.sac_depth * scale,
            "n_spinal": self.narrowing_of("spinal_canal_stenosis"),
            "n_subarticular": n_sub,
            "recess_x": 0.7 * self.sac_half_width * scale * (1 - 0.4 * n_sub),
            "recess_hx": self.recess_half[0] * scale * (1 - 0.85 * n_sub),
            "recess_hw": self.recess_half[1] * scale * (1 - 0.5 * n_sub),
            "foramen_w": np.broadcast_to(back_wall + fw0 + 0.5, (2, len(LEVELS))),
            "foramen_hw": fw0 * (1 - 0.6 * n_for),
            "foramen_hs": foramen_hs,
            "foramen_s": root_s + 0.5 * foramen_hs,
            "root_s": np.broadcast_to(root_s, (2, len(LEVELS))),
        }

    def landmarks(self) -> dict[tuple[str, str], np.ndarray]:
        """Patient position of every label point: (condition, level) -> (3,).

        Spinal canal: the sac's centre at the disc mid-plane. Foramina: the centre of the foramen's fat.
        Subarticular: the centre of the lateral recess at the disc mid-plane.
        """
        g = self.level_shapes()
        out = {}
        for k, level in enumerate(LEVELS):
            s = self.disc_centres_s[k]
            n, depth = g["n_spinal"][k], g["sac_depth"][k]
            front = g["sac_front"][k] + 0.55 * n * depth
            centre = front + 0.5 * depth * (1 - n)
            out[("spinal_canal_stenosis", level)] = self.to_patient(self.body_point(0.0, centre, s))
            for i, (side, sign) in enumerate((("left", 1.0), ("right", -1.0))):
                out[(f"{side}_neural_foraminal_narrowing", level)] = self.to_patient(
                    self.body_point(sign * self.foramen_x, g["foramen_w"][i, k], g["foramen_s"][i, k])
                )
                out[(f"{side}_subarticular_stenosis", level)] = self.to_patient(
                    self.body_point(sign * g["recess_x"][i, k], front + g["recess_hw"][i, k], s)
                )
        return out

    # ----------------------------------------------------------------------------------------- image
    def intensity(self, points: np.ndarray, sequence: str, edge: float = 1.0) -> np.ndarray:
        """Noise-free signal at patient points (..., 3) for a sequence ("T1", "T2" or "STIR").

        Args:
            points: patient positions in mm.
            sequence: key of `CONTRAST`.
            edge: width in mm over which a boundary blurs (about a pixel, for anti-aliasing).
        """
        c = {t: np.float32(CONTRAST[sequence][t] * j) for t, j in zip(TISSUES, self.contrast_jitter)}
        shape = np.shape(points)[:-1]
        body = self.to_body(np.reshape(points, (-1, 3))).astype(np.float32)
        x, w, s = self.spine_coordinates(body)
        out = np.zeros(len(x), np.float32)

        def paint(value, occupancy, where=slice(None)):
            out[where] += occupancy * (value - out[where])

        # Body outline: subcutaneous fat, then muscle; the abdomen in front of the spine is textured.
        half_w, half_d, centre_y, fat = self.outline.astype(np.float32)
        yb = body[:, 1] - centre_y
        paint(c["fat"], _ramp(_ellipse_distance(x, yb, half_w, half_d), edge))
        paint(c["muscle"], _ramp(_ellipse_distance(x, yb, half_w - fat, half_d - fat), edge))
        front = np.flatnonzero(w < -self.body_half[3, 1] - 9.0)
        abdomen = _ramp(-w[front] - self.body_half[3, 1] - 12.0, 6.0) * _ramp(
            _ellipse_distance(x[front], yb[front], half_w - fat - 15, half_d - fat - 8), 4.0
        )
        phases = np.einsum("nj,kj->nk", body[front], self.texture[:, :3].astype(np.float32))
        wave = np.cos(phases + self.texture[:, 3].astype(np.float32)).sum(axis=1)
        paint(c["viscera"] * (1.0 + 0.3 / np.sqrt(len(self.texture)) * wave), abdomen, front)

        # The spine's own structures only near it: evaluate them on that subset of points.
        reach = self.foramen_x + 12.0
        back_most = float(
            self.body_half[:, 1].max() + self.epidural + self.sac_depth * 1.3 + self.lamina + 35.0
        )
        near_spine = np.flatnonzero(
            (np.abs(x) < reach)
            & (w > -self.body_half[:, 1].max() - 4.0)
            & (w < back_most)
            & (s > self.edges[0] - 15.0)
            & (s < self.edges[-1] + 5.0)
        )
        out[near_spine] = self._spine(out[near_spine], x[near_spine], w[near_spine], s[near_spine], c, edge)
        return out.reshape(shape)

    def _spine(
        self, out: np.ndarray, x: np.ndarray, w: np.ndarray, s: np.ndarray, c: dict, edge: float
    ) -> np.ndarray:
        """Paint the spine's structures over `out` at spine coordinates (1-D arrays), in the order later
        shapes cover earlier ones: posterior elements, discs, vertebral bodies, dural sac, lateral recesses,
        foramina."""
        f = self._spine_frame(x, w, s, c, edge)
        out = self._paint_posterior(f, out)
        out = self._paint_discs(f, out)
        out = self._paint_bodies(f, out)
        out, front = self._paint_sac(f, out)
        out = self._paint_recesses(f, out, front)
        return self._paint_foramina(f, out)

    def _spine_frame(self, x: np.ndarray, w: np.ndarray, s: np.ndarray, c: dict, edge: float) -> _SpineFrame:
        """Where each point lies along the spine (`_SpineFrame`), with the per-level shapes in float32."""
        f32 = np.float32
        edges = self.edges.astype(f32)
        body_half = self.body_half.astype(f32)
        discs = self.disc_centres_s.astype(f32)
        heights = self.disc_heights.astype(f32)
        g = {k: v.astype(f32) for k, v in self.level_shapes().items()}

        # Segment of each point: index into edges (even = body, odd = disc), distance to the segment's ends.
        seg = np.clip(np.searchsorted(edges, s) - 1, 0, len(edges) - 2)
        lo, hi = edges[seg], edges[seg + 1]
        span = np.minimum(s - edges[0] + 5.0, edges[-1] - s)  # > 0 within T12 .. S1
        vert = seg // 2  # the body containing the point, or the one above its disc
        near = np.clip(np.searchsorted(0.5 * (discs[1:] + discs[:-1]), s), 0, 4)
        return _SpineFrame(
            x=x,
            w=w,
            s=s,
            ax=np.abs(x),
            side=(x <= 0).astype(np.intp),
            lo=lo,
            hi=hi,
            d_seg=np.minimum(s - lo, hi - s),
            span=span,
            is_body=(seg % 2 == 0) & (span > 0),
            is_disc=(seg % 2 == 1) & (span > 0),
            vert=vert,
            near=near,
            ds=s - discs[near],
            bw=body_half[vert, 1],
            body_half=body_half,
            heights=heights,
            g=g,
            c=c,
            edge=edge,
        )

    def _paint_posterior(self, f: _SpineFrame, out: np.ndarray) -> np.ndarray:
        """Posterior elements: a bony block around the canal, with a spinous process behind each body."""
        f32 = np.float32
        x, w, bw, edge = f.x, f.w, f.bw, f.edge
        back = bw + f32(self.epidural + self.lamina) + f.g["sac_depth"][f.near]
        block = _ellipse_distance(
            x, w - 0.5 * (back + bw), f32(self.foramen_x + 7.0), 0.5 * (back - bw) + 1.0, 4
        )
        out = _paint(out, f.c["posterior"], _ramp(np.minimum(block, f.span), edge))
        spinous = np.minimum(
            np.minimum(3.5 - f.ax, w - bw),
            np.minimum(back + 30.0 - w, 9.0 - np.abs(f.s - 0.5 * (f.lo + f.hi))),
        )
        return _paint(out, f.c["posterior"], _ramp(spinous, edge) * f.is_body)

    def _paint_discs(self, f: _SpineFrame, out: np.ndarray) -> np.ndarray:
        """Discs: annulus and nucleus; the back wall bulges into the canal with spinal stenosis."""
        x, w, g, c, edge = f.x, f.w, f.g, f.c, f.edge
        lvl = np.clip(f.vert - 1, 0, len(LEVELS) - 1)
        bx_d, bw_d = f.body_half[lvl + 1, 0] + 1.0, f.body_half[lvl + 1, 1] + 1.0
        bulge = 0.55 * g["n_spinal"][lvl] * g["sac_depth"][lvl]
        annulus = _ellipse_distance(x, w, bx_d, np.where(w > 0, bw_d + bulge, bw_d), 4)
        out = _paint(out, c["annulus"], _ramp(np.minimum(annulus, f.d_seg + 0.5), edge) * f.is_disc)
        nucleus = _ellipse_distance(x, w, 0.6 * bx_d, 0.55 * bw_d)
        nucleus_level = (c["nucleus"] * (1.0 - 0.6 * self.degeneration)).astype(np.float32)
        return _paint(out, nucleus_level[lvl], _ramp(np.minimum(nucleus, f.d_seg - 1.5), edge) * f.is_disc)

    def _paint_bodies(self, f: _SpineFrame, out: np.ndarray) -> np.ndarray:
        """Vertebral bodies: marrow inside a thin dark cortex."""
        body_d = np.minimum(_ellipse_distance(f.x, f.w, f.body_half[f.vert, 0], f.bw, 4), f.d_seg)
        out = _paint(out, f.c["cortex"], _ramp(body_d, f.edge) * f.is_body)
        return _paint(out, f.c["marrow"], _ramp(body_d - 1.0, f.edge) * f.is_body)

    def _paint_sac(self, f: _SpineFrame, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dural sac (CSF): pinched at each disc by spinal stenosis, narrowed on one side by subarticular;
        epidural fat behind it. Returns the painted values and the sac's front wall (w), where the recesses
        sit."""
        f32 = np.float32
        x, w, g, near, edge = f.x, f.w, f.g, f.near, f.edge
        bump = np.exp(-0.5 * (f.ds / (0.4 * f.heights[near] + 2.5)) ** 2)
        n_sp = g["n_spinal"][near] * bump
        depth = g["sac_depth"][near]
        front = g["sac_front"][near] + 0.55 * n_sp * depth
        rear = front + depth * (1 - n_sp)
        n_side = g["n_subarticular"][f.side, near] * bump
        half_x = (
            f32(self.sac_half_width)
            * self.level_scale[near].astype(f32)
            * (1 - 0.3 * n_sp)
            * (1 - 0.4 * n_side)
        )
        sac = _ellipse_distance(x, w - 0.5 * (front + rear), half_x, 0.5 * (rear - front))
        fat = _ellipse_distance(x, w - rear - 1.0, 0.5 * half_x, f32(2.5))
        out = _paint(out, f.c["fat"], _ramp(np.minimum(fat, f.span), edge))
        return _paint(out, f.c["csf"], _ramp(np.minimum(sac, f.span), edge)), front

    def _paint_recesses(self, f: _SpineFrame, out: np.ndarray, front: np.ndarray) -> np.ndarray:
        """Lateral recesses: CSF lobes at the front corners of the sac at each disc, on the point's side."""
        g, side, near = f.g, f.side, f.near
        rx, rw = g["recess_hx"][side, near], g["recess_hw"][side, near]
        half_s = 0.5 * f.heights[near] + 3.0
        lobe = _ellipse_distance(f.ax - g["recess_x"][side, near], f.w - front - rw, rx, rw)
        occupancy = _ramp(np.minimum(lobe, (1.0 - np.abs(f.ds) / half_s) * np.minimum(rx, rw)), f.edge)
        return _paint(out, f.c["csf"], occupancy)

    def _paint_foramina(self, f: _SpineFrame, out: np.ndarray) -> np.ndarray:
        """Neural foramina: a fat-filled opening behind the disc around its root, framed by cortex."""
        f32 = np.float32
        g, side, near, c, edge = f.g, f.side, f.near, f.c, f.edge
        fw, fs = g["foramen_hw"][side, near], g["foramen_hs"][side, near]
        dw = f.w - g["foramen_w"][side, near]
        dsf = f.s - g["foramen_s"][side, near]
        u2 = ((f.ax - f32(self.foramen_x)) / f32(FORAMEN_HALF_X)) ** 2
        small = np.minimum(fw, fs)
        rim = (1.0 - np.sqrt(u2 + (dw / (fw + 1.2)) ** 2 + (dsf / (fs + 1.2)) ** 2)) * small
        out = _paint(out, c["cortex"], _ramp(rim, edge))
        fat_d = (1.0 - np.sqrt(u2 + (dw / fw) ** 2 + (dsf / fs) ** 2)) * small
        out = _paint(out, c["fat"], _ramp(fat_d, edge))
        root = np.minimum(
            1.6 - np.hypot(dw, f.s - g["root_s"][side, near]), FORAMEN_HALF_X * (1.0 - np.sqrt(u2))
        )
        return _paint(out, c["root"], _ramp(root, edge))


@dataclass(frozen=True)
class _SpineFrame:
    """Points near the spine, where each lies along it, and what the painted structures read (float32).

    Attributes:
        x, w, s: spine coordinates; ax: |x|; side: 0 = left (+x in LPS), 1 = right.
        lo, hi, d_seg: the ends of the point's segment (a body or a disc) and the distance to the nearer one.
        span: > 0 within T12 .. S1; is_body, is_disc: the kind of the point's segment (inside that span).
        vert: the body containing the point, or the one above its disc; bw: that body's half-depth.
        near: the nearest disc (0 = L1/L2); ds: the arc length from its mid-plane.
        body_half, heights, g: the bodies' half-sizes, the disc heights and `Phantom.level_shapes`.
        c, edge: the tissues' values and the boundary blur width (`Phantom.intensity`).
    """

    x: np.ndarray
    w: np.ndarray
    s: np.ndarray
    ax: np.ndarray
    side: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    d_seg: np.ndarray
    span: np.ndarray
    is_body: np.ndarray
    is_disc: np.ndarray
    vert: np.ndarray
    near: np.ndarray
    ds: np.ndarray
    bw: np.ndarray
    body_half: np.ndarray
    heights: np.ndarray
    g: dict[str, np.ndarray]
    c: dict
    edge: float


def _paint(out: np.ndarray, value, occupancy: np.ndarray) -> np.ndarray:
    """`out` with `value` painted over it as far as `occupancy` (0 .. 1) covers it."""
    return out + occupancy * (value - out)


def draw_phantom(rng: np.random.Generator, severity: np.ndarray) -> Phantom:
    """Draw one study's anatomy for its (25,) latent severities.

    Everything that is not the severity (pose, size, curvature, segment heights, per-level sizes, contrast)
    varies between studies, so no fixed pixel rule reads the grade.
    """
    severity = np.asarray(severity, float)
    size = rng.normal(1.0, 0.07)
    level_sev = severity.reshape(len(CONDITIONS), len(LEVELS)).mean(axis=0)
    degeneration = ndtr((level_sev - 0.3) / 0.8) * rng.uniform(0.6, 1.0)
    edges = _segment_edges(rng, size, degeneration)

    half_width = size * rng.normal(22.0, 1.5) * np.linspace(0.9, 1.1, len(VERTEBRAE))
    half_depth = size * rng.normal(16.0, 1.0) * np.linspace(0.95, 1.05, len(VERTEBRAE))
    body_half = np.stack([half_width, half_depth], axis=1)

    angles = rng.normal(0.0, [3.0, 2.5, 3.0])  # yaw, pitch, roll in degrees: the patient is never straight
    rotation = Rotation.from_euler("zxy", angles, degrees=True).as_matrix()
    origin = np.array([rng.normal(0.0, 8.0), rng.normal(40.0, 15.0), rng.normal(-500.0, 60.0)])

    sac_depth = size * rng.normal(14.0, 1.2)
    epidural = rng.uniform(1.0, 2.5)
    lamina = rng.uniform(7.0, 10.0)
    back_of_canal = half_depth[3] + epidural + sac_depth + lamina
    muscle = rng.uniform(50.0, 80.0)
    fat = rng.uniform(8.0, 30.0)
    outline_half_depth = rng.uniform(95.0, 135.0)
    outline = np.array(
        [
            rng.uniform(140.0, 185.0),
            outline_half_depth,
            back_of_canal + muscle + fat - outline_half_depth,
            fat,
        ]
    )
    texture = _texture(rng)

    return Phantom(
        rotation=rotation,
        origin=origin,
        radius=rng.uniform(200.0, 400.0),
        s_apex=rng.uniform(75.0, 120.0),
        edges=edges,
        body_half=body_half,
        sac_half_width=size * rng.normal(10.5, 0.8),
        sac_depth=sac_depth,
        epidural=epidural,
        lamina=lamina,
        foramen_x=float(half_width[1:6].mean() * rng.uniform(0.66, 0.76)),  # behind the body, not past it
        foramen_half=size * np.array([rng.normal(4.5, 0.4), rng.normal(8.0, 0.6)]),
        recess_half=size * np.array([rng.normal(4.0, 0.4), rng.normal(3.0, 0.3)]),
        level_scale=rng.normal(1.0, 0.06, len(LEVELS)),
        narrowing=narrowing(severity),
        degeneration=degeneration,
        outline=outline,
        contrast_jitter=np.exp(rng.normal(0.0, 0.07, len(TISSUES))),
        texture=texture,
    )


def _segment_edges(rng: np.random.Generator, size: float, degeneration: np.ndarray) -> np.ndarray:
    """(14,) arc lengths of the segment boundaries, top of T12 to the bottom of S1, s = 0 at the top of L1:
    vertebral bodies about 21 mm high (the sacrum 35), discs about 8.5 mm, thinner as they degenerate."""
    body_h = size * rng.normal(21.0, 1.3) + rng.normal(0.0, 0.7, len(VERTEBRAE))
    body_h[-1] = size * 35.0  # S1: the top of the sacrum
    disc_degeneration = np.concatenate([[0.5 * degeneration[0]], degeneration])  # T12/L1 first
    disc_h = size * rng.normal(8.5, 0.8) * (1.0 - 0.35 * disc_degeneration) + rng.normal(
        0.0, 0.4, len(LEVELS) + 1
    )
    disc_h[-1] *= 0.85  # L5/S1 is usually the thinnest
    heights = np.empty(2 * len(VERTEBRAE) - 1)
    heights[0::2], heights[1::2] = body_h, disc_h
    edges = np.concatenate([[0.0], np.cumsum(heights)])
    edges -= edges[2]  # s = 0 at the top of L1
    return edges


def _texture(rng: np.random.Generator) -> np.ndarray:
    """(TEXTURE_WAVES, 4) plane waves (kx, ky, kz, phase) of random directions, 15 to 45 mm long."""
    direction = rng.normal(size=(TEXTURE_WAVES, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return np.concatenate(
        [
            direction * 2 * np.pi / rng.uniform(15.0, 45.0, (TEXTURE_WAVES, 1)),
            rng.uniform(0, 2 * np.pi, (TEXTURE_WAVES, 1)),
        ],
        axis=1,
    )
