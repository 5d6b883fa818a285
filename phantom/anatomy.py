"""An analytic head in patient millimetres (LPS): skull, brain, a circle-of-Willis vessel tree and aneurysm blobs."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from inference.errors import ConfigError
from inference.labels import LABELS, LOCATION_LABELS, PRESENT_INDEX

__all__ = [
    "Point",
    "Vessel",
    "Aneurysm",
    "Anatomy",
    "TEMPLATE_SITES",
    "random_anatomy",
    "template_anatomy",
]

Point = tuple[float, float, float]

# Key points of the LEFT half (+x = patient left); the right half mirrors x. LPS: +y posterior, +z superior.
_LEFT_POINTS: dict[str, Point] = {
    "ica_neck": (20.0, 10.0, -55.0),
    "ica_infra": (19.0, 3.0, -32.0),
    "ica_clinoid": (17.0, -4.0, -20.0),
    "ica_supra": (16.0, -4.0, -12.0),
    "ica_pcom": (15.5, -3.0, -8.0),
    "ica_term": (15.0, -2.0, -4.0),
    "mca_m1": (28.0, -4.0, -2.0),
    "mca_bif": (40.0, -3.0, 0.0),
    "mca_m2_sup": (52.0, -8.0, 12.0),
    "mca_m2_inf": (54.0, 5.0, -2.0),
    "aca_a1": (9.0, -10.0, -3.0),
    "acom_end": (2.5, -18.0, -2.0),
    "aca_a2": (4.0, -26.0, 8.0),
    "aca_a2_top": (5.0, -40.0, 28.0),
    "pcom": (14.0, 5.0, -7.0),
    "p1p2": (12.0, 13.0, -6.0),
    "pca_p2": (26.0, 28.0, 0.0),
    "pca_p3": (34.0, 48.0, 6.0),
    "vert_low": (10.0, 28.0, -65.0),
    "vert_mid": (3.0, 22.0, -50.0),
}
_MIDLINE_POINTS: dict[str, Point] = {
    "vb_junction": (0.0, 21.0, -45.0),
    "basilar_mid": (0.0, 19.0, -28.0),
    "basilar_tip": (0.0, 14.0, -8.0),
    "acom": (0.0, -18.0, -2.0),
}
# (vessel name, key points, radius mm); "{s}" is L or R, lateral chains are built for both sides.
_LATERAL_VESSELS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("ICA", ("ica_neck", "ica_infra", "ica_clinoid", "ica_supra", "ica_pcom", "ica_term"), 2.2),
    ("MCA", ("ica_term", "mca_m1", "mca_bif", "mca_m2_sup"), 1.6),
    ("MCA_M2_inferior", ("mca_bif", "mca_m2_inf"), 1.3),
    ("ACA", ("ica_term", "aca_a1", "acom_end", "aca_a2", "aca_a2_top"), 1.4),
    ("PComm", ("ica_pcom", "pcom", "p1p2"), 1.0),
    ("PCA", ("basilar_tip", "p1p2", "pca_p2", "pca_p3"), 1.5),
    ("Vertebral", ("vert_low", "vert_mid", "vb_junction"), 1.7),
)
_MIDLINE_VESSELS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("Basilar", ("vb_junction", "basilar_mid", "basilar_tip"), 1.9),
)
# Where each competition location sits: a key point ("L:"/"R:" for a side, "M:" for the midline).
_SITE_KEYS: dict[str, str] = {
    "Left Infraclinoid Internal Carotid Artery": "L:ica_infra",
    "Right Infraclinoid Internal Carotid Artery": "R:ica_infra",
    "Left Supraclinoid Internal Carotid Artery": "L:ica_supra",
    "Right Supraclinoid Internal Carotid Artery": "R:ica_supra",
    "Left Middle Cerebral Artery": "L:mca_bif",
    "Right Middle Cerebral Artery": "R:mca_bif",
    "Anterior Communicating Artery": "M:acom",
    "Left Anterior Cerebral Artery": "L:aca_a1",
    "Right Anterior Cerebral Artery": "R:aca_a1",
    "Left Posterior Communicating Artery": "L:pcom",
    "Right Posterior Communicating Artery": "R:pcom",
    "Basilar Tip": "M:basilar_tip",
    "Other Posterior Circulation": "M:basilar_mid",
}


def _template_points() -> dict[str, Point]:
    points: dict[str, Point] = {}
    for key, (x, y, z) in _LEFT_POINTS.items():
        points[f"L:{key}"] = (x, y, z)
        points[f"R:{key}"] = (-x, y, z)
    for key, p in _MIDLINE_POINTS.items():
        points[f"M:{key}"] = p
        points[f"L:{key}"] = p
        points[f"R:{key}"] = p
    return points


# The 13 location sites of the unjittered template (patient mm), in LOCATION_LABELS order.
TEMPLATE_SITES: dict[str, Point] = {name: _template_points()[_SITE_KEYS[name]] for name in LOCATION_LABELS}


@dataclass(frozen=True)
class Vessel:
    """A tube of constant radius (mm) around a polyline of patient-space points."""

    name: str
    points: tuple[Point, ...]
    radius: float


@dataclass(frozen=True)
class Aneurysm:
    """A round blob (sphere) at one competition location; `centre` in patient mm (LPS)."""

    location: str
    centre: Point
    radius: float


@dataclass(frozen=True)
class Anatomy:
    """Everything the renderer needs: head ellipsoid, vessel tubes, location sites, aneurysms.

    Attributes:
        head_centre: centre of the head ellipsoid (mm, LPS).
        head_semi_axes: ellipsoid semi-axes along x, y, z (mm).
        scalp_mm, skull_mm: thickness of the scalp and skull layers inside the head surface.
        vessels: vessel tubes.
        sites: (location name, point on the vessel centreline) for all 13 locations.
        aneurysms: 0-3 blobs, at most one per location.
        texture_phase: phases of the smooth brain texture.
    """

    head_centre: Point
    head_semi_axes: Point
    vessels: tuple[Vessel, ...]
    sites: tuple[tuple[str, Point], ...]
    aneurysms: tuple[Aneurysm, ...] = ()
    scalp_mm: float = 5.0
    skull_mm: float = 6.0
    ventricles: tuple[tuple[Point, Point], ...] = field(default=())  # (centre, semi-axes)
    texture_phase: Point = (0.0, 0.0, 0.0)

    def site(self, location: str) -> Point:
        """Centreline point of a location (KeyError for an unknown name)."""
        for name, point in self.sites:
            if name == location:
                return point
        raise KeyError(location)

    @property
    def positive_locations(self) -> tuple[str, ...]:
        return tuple(a.location for a in self.aneurysms)

    def labels(self) -> np.ndarray:
        """The 14 labels (int 0/1) in LABELS order; Aneurysm Present = any location."""
        out = np.zeros(len(LABELS), dtype=np.int64)
        for a in self.aneurysms:
            out[LABELS.index(a.location)] = 1
        out[PRESENT_INDEX] = int(out[:PRESENT_INDEX].any())
        return out

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) patient-mm corners of the box holding every site and blob."""
        pts = [np.asarray(p) for _, p in self.sites]
        lows = [p - 3.0 for p in pts] + [np.asarray(a.centre) - a.radius for a in self.aneurysms]
        highs = [p + 3.0 for p in pts] + [np.asarray(a.centre) + a.radius for a in self.aneurysms]
        return np.min(lows, axis=0), np.max(highs, axis=0)


def _build(points: dict[str, Point], aneurysms: tuple[Aneurysm, ...], *, head_centre: Point,
           head_semi_axes: Point, texture_phase: Point) -> Anatomy:
    vessels = []
    for name, keys, radius in _LATERAL_VESSELS:
        for side in ("L", "R"):
            vessels.append(Vessel(f"{side} {name}", tuple(points[f"{side}:{k}"] for k in keys), radius))
    for name, keys, radius in _MIDLINE_VESSELS:
        vessels.append(Vessel(name, tuple(points[f"M:{k}"] for k in keys), radius))
    acom = Vessel("AComm", (points["L:acom_end"], points["M:acom"], points["R:acom_end"]), 1.0)
    vessels.append(acom)
    sites = tuple((name, points[_SITE_KEYS[name]]) for name in LOCATION_LABELS)
    hx, hy, hz = head_centre
    ventricles = tuple(((side * 7.0 + hx, hy - 5.0, hz + 17.0), (5.0, 18.0, 7.0)) for side in (1.0, -1.0))
    return Anatomy(head_centre=head_centre, head_semi_axes=head_semi_axes, vessels=tuple(vessels), sites=sites,
                   aneurysms=aneurysms, ventricles=ventricles, texture_phase=texture_phase)


def template_anatomy(*, aneurysms: Sequence[Aneurysm] = ()) -> Anatomy:
    """The unjittered head (no random variation), with the given aneurysms."""
    return _build(_template_points(), tuple(aneurysms), head_centre=(0.0, 5.0, 5.0),
                  head_semi_axes=(70.0, 88.0, 85.0), texture_phase=(0.0, 0.0, 0.0))


def _vessel_direction(points: dict[str, Point], location: str) -> np.ndarray:
    """Unit direction of the vessel through a location's site (for placing the blob beside it)."""
    side, name = _SITE_KEYS[location].split(":")
    if name == "acom":
        return np.array([1.0, 0.0, 0.0])
    chains = _MIDLINE_VESSELS if side == "M" else _LATERAL_VESSELS
    for _, keys, _ in chains:
        if name in keys:
            i = keys.index(name)
            a = np.asarray(points[f"{side}:{keys[max(i - 1, 0)]}"])
            b = np.asarray(points[f"{side}:{keys[min(i + 1, len(keys) - 1)]}"])
            d = b - a
            return d / (np.linalg.norm(d) + 1e-9)
    raise KeyError(location)


def random_anatomy(
    rng: np.random.Generator,
    *,
    positive_locations: Sequence[str] | None = None,
    positive_fraction: float = 0.5,
    blob_radius: tuple[float, float] = (3.0, 6.0),
    jitter_mm: float = 1.5,
) -> Anatomy:
    """A randomly varied head: global shift/scale, per-point jitter, 0-3 aneurysms.

    Args:
        rng: the random source (the only one used, so a seeded generator gives the same anatomy).
        positive_locations: exactly these locations get a blob; None draws them (none with probability
            1 - positive_fraction, else 1-3 distinct locations).
        positive_fraction: probability of at least one aneurysm when positive_locations is None.
        blob_radius: (min, max) blob radius in mm.
        jitter_mm: standard deviation of the per-point displacement.
    Returns:
        An Anatomy.
    Raises:
        ConfigError: unknown location names, more than 3 or repeated locations, bad radius range.
    """
    if not 0.0 < blob_radius[0] <= blob_radius[1]:
        raise ConfigError(f"blob_radius must be (min, max) with 0 < min <= max, got {blob_radius}")
    if positive_locations is None:
        if rng.random() < positive_fraction:
            count = int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))
            chosen = rng.choice(len(LOCATION_LABELS), size=count, replace=False)
            positive_locations = [LOCATION_LABELS[int(i)] for i in sorted(chosen)]
        else:
            positive_locations = []
    positive_locations = list(positive_locations)
    unknown = [n for n in positive_locations if n not in LOCATION_LABELS]
    if unknown or len(set(positive_locations)) != len(positive_locations) or len(positive_locations) > 3:
        raise ConfigError(f"positive_locations must be 0-3 distinct location labels, got {positive_locations}")

    scale = rng.uniform(0.92, 1.08)
    shift = rng.uniform(-4.0, 4.0, size=3)
    base = _template_points()
    points: dict[str, Point] = {}
    for key in sorted(k for k in base if not k.startswith("M:")) + sorted(k for k in base if k.startswith("M:")):
        if key.startswith("M:"):
            # midline points stay on x = 0 (shared by both sides' chains)
            j = np.array([0.0, *rng.normal(0.0, jitter_mm, size=2)])
        else:
            j = rng.normal(0.0, jitter_mm, size=3)
        p = np.asarray(base[key]) * scale + shift + j
        points[key] = (float(p[0]), float(p[1]), float(p[2]))
    for key in _MIDLINE_POINTS:
        points[f"L:{key}"] = points[f"M:{key}"]
        points[f"R:{key}"] = points[f"M:{key}"]

    aneurysms = []
    for name in positive_locations:
        site = np.asarray(points[_SITE_KEYS[name]])
        direction = _vessel_direction(points, name)
        u = rng.normal(size=3)
        u -= direction * float(u @ direction)
        u /= np.linalg.norm(u) + 1e-9
        radius = float(rng.uniform(*blob_radius))
        centre = site + u * radius * 0.6  # bulges out of the vessel wall but stays attached
        aneurysms.append(Aneurysm(name, (float(centre[0]), float(centre[1]), float(centre[2])), radius))
    aneurysms.sort(key=lambda a: LOCATION_LABELS.index(a.location))

    head_centre = tuple(float(v) for v in np.array([0.0, 5.0, 5.0]) * scale + shift)
    semi = tuple(float(v) for v in np.array([70.0, 88.0, 85.0]) * scale * rng.uniform(0.97, 1.03, size=3))
    phase = tuple(float(v) for v in rng.uniform(0.0, 2 * np.pi, size=3))
    return _build(points, tuple(aneurysms), head_centre=head_centre, head_semi_axes=semi,  # type: ignore[arg-type]
                  texture_phase=phase)  # type: ignore[arg-type]
