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
    "Neck",
    "Anatomy",
    "VESSEL_MASK_LABELS",
    "vessel_label_segments",
    "aneurysm_diameter",
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


# The neck (competition-scale phantom only): the carotids and vertebrals run on down to the bottom of any slab.
_NECK_POINTS: dict[str, Point] = {
    "cca_bif": (22.0, 8.0, -80.0),
    "cca_low": (26.0, 6.0, -240.0),
    "vert_c2": (15.0, 30.0, -85.0),
    "vert_base": (17.0, 30.0, -240.0),
}
_NECK_VESSELS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("ICA neck", ("cca_low", "cca_bif", "ica_neck"), 2.8),
    ("Vertebral neck", ("vert_base", "vert_c2", "vert_low"), 1.7),
)
_ICA_INFRACLINOID_SEGMENTS = 2  # ica_neck -> ica_infra -> ica_clinoid; the rest of the ICA chain is supraclinoid

# The competition's vessel label map (segmentations/<uid>/<uid>_cowseg.nii), as the 1st-place solution reads it
# (gunachalla/Intercranial-Aneurysm-Detection, src/nnUnet_utils/create_nnunet_dataset.py, dataset 1): 0 background.
VESSEL_MASK_LABELS: dict[str, int] = {
    "Other Posterior Circulation": 1,
    "Basilar Tip": 2,
    "Right Posterior Communicating Artery": 3,
    "Left Posterior Communicating Artery": 4,
    "Right Infraclinoid Internal Carotid Artery": 5,
    "Left Infraclinoid Internal Carotid Artery": 6,
    "Right Supraclinoid Internal Carotid Artery": 7,
    "Left Supraclinoid Internal Carotid Artery": 8,
    "Right Middle Cerebral Artery": 9,
    "Left Middle Cerebral Artery": 10,
    "Right Anterior Cerebral Artery": 11,
    "Left Anterior Cerebral Artery": 12,
    "Anterior Communicating Artery": 13,
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
class Neck:
    """What a neck-to-vertex series holds below the brain: soft tissue, the skull base and the cervical spine.

    Attributes:
        centre_xy, semi_xy: the neck, an elliptic cylinder (mm) below `top_z`.
        top_z: where the neck cylinder ends (it merges into the head above).
        brain_floor_z: below this the head holds soft tissue, not brain (the posterior fossa's floor).
        bones: (centre, semi-axes) ellipsoids drawn as bone: skull base (petrous ridges, clivus, occipital floor)
            and the cervical vertebrae (bodies and the transverse processes the vertebral arteries pass through).
    """

    centre_xy: tuple[float, float]
    semi_xy: tuple[float, float]
    top_z: float
    brain_floor_z: float
    bones: tuple[tuple[Point, Point], ...]


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
    neck: Neck | None = None  # competition scale: neck, skull base, cervical spine (None: the head alone)

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
           head_semi_axes: Point, texture_phase: Point, neck: Neck | None = None) -> Anatomy:
    vessels = []
    for name, keys, radius in _LATERAL_VESSELS:
        for side in ("L", "R"):
            vessels.append(Vessel(f"{side} {name}", tuple(points[f"{side}:{k}"] for k in keys), radius))
    for name, keys, radius in _MIDLINE_VESSELS:
        vessels.append(Vessel(name, tuple(points[f"M:{k}"] for k in keys), radius))
    acom = Vessel("AComm", (points["L:acom_end"], points["M:acom"], points["R:acom_end"]), 1.0)
    vessels.append(acom)
    if neck is not None:
        for name, keys, radius in _NECK_VESSELS:
            for side in ("L", "R"):
                vessels.append(Vessel(f"{side} {name}", tuple(points[f"{side}:{k}"] for k in keys), radius))
    sites = tuple((name, points[_SITE_KEYS[name]]) for name in LOCATION_LABELS)
    hx, hy, hz = head_centre
    ventricles = tuple(((side * 7.0 + hx, hy - 5.0, hz + 17.0), (5.0, 18.0, 7.0)) for side in (1.0, -1.0))
    return Anatomy(head_centre=head_centre, head_semi_axes=head_semi_axes, vessels=tuple(vessels), sites=sites,
                   aneurysms=aneurysms, ventricles=ventricles, texture_phase=texture_phase, neck=neck)


def _neck(scale: float, shift: np.ndarray, rng: np.random.Generator) -> Neck:
    """The neck, skull base and cervical spine of a head of this scale and shift (template mm, then moved)."""
    def move(p: Sequence[float]) -> Point:
        q = np.asarray(p, dtype=float) * scale + shift
        return (float(q[0]), float(q[1]), float(q[2]))

    def size(s: Sequence[float]) -> Point:
        return (float(s[0] * scale), float(s[1] * scale), float(s[2] * scale))

    bones: list[tuple[Point, Point]] = [
        (move((0.0, 10.0, -38.0)), size((9.0, 8.0, 15.0))),  # clivus, in front of the basilar artery
        (move((0.0, 52.0, -56.0)), size((48.0, 30.0, 6.0))),  # occipital floor of the posterior fossa
    ]
    for side in (1.0, -1.0):  # petrous ridges and the middle fossa floor, around the infraclinoid carotid
        bones.append((move((side * 30.0, 10.0, -34.0)), size((24.0, 13.0, 7.0))))
        bones.append((move((side * 28.0, -12.0, -40.0)), size((20.0, 18.0, 5.0))))
    height = float(rng.uniform(14.0, 17.0))  # a vertebra and its disc
    z = -64.0
    while z > -260.0:  # vertebral bodies, and transverse processes either side of the vertebral arteries
        bones.append((move((0.0, 28.0, z)), size((9.0, 8.0, height * 0.38))))
        bones.append((move((0.0, 30.0, z)), size((23.0, 4.5, height * 0.22))))
        z -= height
    return Neck(centre_xy=(float(shift[0]), float(10.0 * scale + shift[1])), semi_xy=(58.0 * scale, 55.0 * scale),
                top_z=float(-40.0 * scale + shift[2]), brain_floor_z=float(-52.0 * scale + shift[2]),
                bones=tuple(bones))


def vessel_label_segments(anatomy: Anatomy) -> list[tuple[int, Point, Point, float]]:
    """(mask label, segment start, segment end, radius) of every labelled vessel segment of `anatomy`.

    The 13 labels of VESSEL_MASK_LABELS: the ICA's first two segments are infraclinoid, the rest supraclinoid;
    vertebrals, PCAs and the lower basilar are 'Other Posterior Circulation', the upper basilar 'Basilar Tip'.
    The neck vessels (below the template's ICA and vertebral starts) are not labelled, as in the real masks.
    """
    side_name = {"L": "Left", "R": "Right"}
    out: list[tuple[int, Point, Point, float]] = []
    for v in anatomy.vessels:
        segments = list(zip(v.points[:-1], v.points[1:]))
        parts = v.name.split(" ", 1)
        if v.name == "AComm":
            labels = [VESSEL_MASK_LABELS["Anterior Communicating Artery"]] * len(segments)
        elif v.name == "Basilar":
            labels = [VESSEL_MASK_LABELS["Other Posterior Circulation"]] + \
                     [VESSEL_MASK_LABELS["Basilar Tip"]] * (len(segments) - 1)
        elif len(parts) == 2 and parts[0] in side_name:
            side, kind = side_name[parts[0]], parts[1]
            if kind == "ICA":
                labels = [VESSEL_MASK_LABELS[f"{side} Infraclinoid Internal Carotid Artery"]
                          if i < _ICA_INFRACLINOID_SEGMENTS else
                          VESSEL_MASK_LABELS[f"{side} Supraclinoid Internal Carotid Artery"]
                          for i in range(len(segments))]
            elif kind in ("MCA", "MCA_M2_inferior"):
                labels = [VESSEL_MASK_LABELS[f"{side} Middle Cerebral Artery"]] * len(segments)
            elif kind == "ACA":
                labels = [VESSEL_MASK_LABELS[f"{side} Anterior Cerebral Artery"]] * len(segments)
            elif kind == "PComm":
                labels = [VESSEL_MASK_LABELS[f"{side} Posterior Communicating Artery"]] * len(segments)
            elif kind in ("PCA", "Vertebral"):
                labels = [VESSEL_MASK_LABELS["Other Posterior Circulation"]] * len(segments)
            else:  # the neck's vessels
                continue
        else:
            continue
        out.extend((label, a, b, v.radius) for label, (a, b) in zip(labels, segments))
    return out


def aneurysm_diameter(rng: np.random.Generator, radius_range: tuple[float, float]) -> float:
    """An aneurysm diameter (mm) as the competition's are distributed: log-normal, median 4.5 mm, most under 7 mm.

    Clipped to 2 x radius_range (the competition preset: 2-10 mm across).
    """
    return float(np.clip(4.5 * np.exp(rng.normal(0.0, 0.4)), 2.0 * radius_range[0], 2.0 * radius_range[1]))


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
    blob_size_law: str = "uniform",
    neck: bool = False,
) -> Anatomy:
    """A randomly varied head: global shift/scale, per-point jitter, 0-3 aneurysms.

    Args:
        rng: the random source (the only one used, so a seeded generator gives the same anatomy).
        positive_locations: exactly these locations get a blob; None draws them (none with probability
            1 - positive_fraction, else 1-3 distinct locations).
        positive_fraction: probability of at least one aneurysm when positive_locations is None.
        blob_radius: (min, max) blob radius in mm.
        jitter_mm: standard deviation of the per-point displacement.
        blob_size_law: 'uniform' (radius uniform in blob_radius) or 'competition' (aneurysm_diameter: log-normal
            diameters, median 4.5 mm, clipped to 2 x blob_radius).
        neck: also grow the neck (carotids and vertebrals down to z = -240 mm, skull base, cervical spine). Its
            random draws come after every other draw, so the head itself does not change.
    Returns:
        An Anatomy.
    Raises:
        ConfigError: unknown location names, more than 3 or repeated locations, bad radius range.
    """
    if not 0.0 < blob_radius[0] <= blob_radius[1]:
        raise ConfigError(f"blob_radius must be (min, max) with 0 < min <= max, got {blob_radius}")
    if blob_size_law not in ("uniform", "competition"):
        raise ConfigError(f"blob_size_law must be 'uniform' or 'competition', got {blob_size_law!r}")
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
        if blob_size_law == "uniform":
            radius = float(rng.uniform(*blob_radius))
        else:
            radius = aneurysm_diameter(rng, blob_radius) / 2.0
        centre = site + u * radius * 0.6  # bulges out of the vessel wall but stays attached
        aneurysms.append(Aneurysm(name, (float(centre[0]), float(centre[1]), float(centre[2])), radius))
    aneurysms.sort(key=lambda a: LOCATION_LABELS.index(a.location))

    head_centre = tuple(float(v) for v in np.array([0.0, 5.0, 5.0]) * scale + shift)
    semi = tuple(float(v) for v in np.array([70.0, 88.0, 85.0]) * scale * rng.uniform(0.97, 1.03, size=3))
    phase = tuple(float(v) for v in rng.uniform(0.0, 2 * np.pi, size=3))
    neck_anatomy = None
    if neck:  # drawn last: the head above is the same with or without a neck
        for key, p0 in _NECK_POINTS.items():
            for side, sign in (("L", 1.0), ("R", -1.0)):
                j = rng.normal(0.0, jitter_mm, size=3)
                p = np.array([sign * p0[0], p0[1], p0[2]]) * scale + shift + j
                points[f"{side}:{key}"] = (float(p[0]), float(p[1]), float(p[2]))
        neck_anatomy = _neck(scale, shift, rng)
    return _build(points, tuple(aneurysms), head_centre=head_centre, head_semi_axes=semi,  # type: ignore[arg-type]
                  texture_phase=phase, neck=neck_anatomy)  # type: ignore[arg-type]
