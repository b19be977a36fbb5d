"""Procedural pedestrian crops of the synthetic domains: people, cameras, scenes (NumPy only).

mlc_tf.data.synthetic decides which images a set holds; this module draws them. Every draw
comes from the generator it is handed, so equal seeds give equal pixels.
"""

from __future__ import annotations

import numpy as np

_FAMILY_SIZE = 4
_TEXTURES = ("plain", "stripes", "checks", "logo")
# Clothing palette (RGB in [0, 1]): few colours, so unrelated families collide too.
_PALETTE = np.array([
    [0.1, 0.1, 0.12], [0.85, 0.85, 0.85], [0.55, 0.1, 0.1], [0.1, 0.2, 0.5], [0.2, 0.45, 0.2],
    [0.85, 0.75, 0.2], [0.5, 0.5, 0.52], [0.45, 0.3, 0.15], [0.9, 0.45, 0.15], [0.45, 0.2, 0.5],
    [0.15, 0.55, 0.6], [0.85, 0.55, 0.65], [0.25, 0.25, 0.35], [0.7, 0.65, 0.5]], np.float32)
_SKIN = np.array([[0.95, 0.8, 0.65], [0.8, 0.6, 0.45], [0.55, 0.38, 0.25], [0.35, 0.22, 0.15]],
                 np.float32)
_TARGET_FAMILY_SIZE = 3
_TARGET_OUTFITS = ("coat", "jacket", "dress", "tshirt")
_TARGET_TEXTURES = ("plain", "vstripes", "dots", "diagonal", "two_tone")
# Another wardrobe: olive, camel, burgundy, navy, teal, coral, lilac, mustard, charcoal, cream,
# sky blue, forest green, rust, pink.
_TARGET_PALETTE = np.array([
    [0.42, 0.45, 0.2], [0.76, 0.6, 0.4], [0.45, 0.05, 0.2], [0.08, 0.1, 0.3], [0.0, 0.45, 0.42],
    [0.95, 0.5, 0.42], [0.7, 0.6, 0.85], [0.8, 0.62, 0.05], [0.2, 0.2, 0.2], [0.95, 0.92, 0.8],
    [0.45, 0.7, 0.95], [0.05, 0.3, 0.12], [0.65, 0.28, 0.08], [0.98, 0.4, 0.7]], np.float32)
# Lighting regimes of target cameras, taken in turn: colour tint, per-channel cast spread and
# brightness, gamma and noise ranges.
_LIGHTING = (
    ((1.0, 1.0, 1.0), 0.15, (0.0, 0.12), (0.7, 0.95), (0.01, 0.03)),  # day
    ((0.95, 1.0, 1.05), 0.1, (-0.05, 0.08), (0.9, 1.1), (0.02, 0.04)),  # overcast
    ((0.9, 0.95, 1.1), 0.15, (-0.1, -0.03), (1.1, 1.35), (0.03, 0.06)),  # night
    ((1.12, 1.0, 0.78), 0.15, (-0.06, 0.04), (1.0, 1.2), (0.02, 0.045)),  # sodium lamps
)
_BACKGROUNDS = ("bricks", "pillars", "window")


def _colour(rng: np.random.Generator, jitter: float = 0.06,
            palette: np.ndarray = _PALETTE) -> np.ndarray:
    return np.clip(palette[rng.integers(len(palette))] + rng.normal(0, jitter, 3), 0, 1)


def _source_identity(seed: int, pid: int) -> dict:
    """Appearance of one source identity: family colours, its own texture, shape, accessories."""
    family = np.random.default_rng([seed, 11, pid // _FAMILY_SIZE])
    rng = np.random.default_rng([seed, 12, pid])
    return {
        "top": _colour(family, 0.0) + rng.normal(0, 0.03, 3),
        "bottom": _colour(family, 0.0) + rng.normal(0, 0.03, 3),
        "texture": _TEXTURES[rng.integers(len(_TEXTURES))],
        "texture_colour": _colour(rng), "period": int(rng.integers(3, 7)),
        "skin": _SKIN[rng.integers(len(_SKIN))], "hair": _colour(rng, 0.1) * 0.5,
        "shoes": _colour(rng) * 0.6, "sleeves": bool(rng.random() < 0.6),
        "shorts": bool(rng.random() < 0.25),
        "height": rng.uniform(0.86, 1.0), "width": rng.uniform(0.8, 1.15),
        "hat": (_colour(rng) if rng.random() < 0.3 else None),
        "bag": (_colour(rng) if rng.random() < 0.35 else None),
        "backpack": (_colour(rng) if rng.random() < 0.3 else None),
    }


def _target_identity(seed: int, pid: int) -> dict:
    """Appearance of one target identity: family colours, its own outfit, details and build."""
    family = np.random.default_rng([seed, 111, pid // _TARGET_FAMILY_SIZE])
    rng = np.random.default_rng([seed, 112, pid])
    top = _colour(family, 0.0, _TARGET_PALETTE) + rng.normal(0, 0.03, 3)
    bottom = _colour(family, 0.0, _TARGET_PALETTE) + rng.normal(0, 0.03, 3)
    outfit = _TARGET_OUTFITS[rng.integers(len(_TARGET_OUTFITS))]
    return {
        "outfit": outfit, "top": top, "bottom": bottom,
        "inner": _colour(rng, 0.05, _TARGET_PALETTE),
        "texture": _TARGET_TEXTURES[rng.integers(len(_TARGET_TEXTURES))],
        "texture_colour": _colour(rng, 0.05, _TARGET_PALETTE), "period": int(rng.integers(2, 6)),
        "skin": _SKIN[rng.integers(len(_SKIN))], "hair": _colour(rng, 0.1) * 0.4,
        "long_hair": bool(rng.random() < 0.4), "shoes": _colour(rng, 0.06, _TARGET_PALETTE) * 0.5,
        "sleeves": outfit != "tshirt", "shorts": bool(outfit == "tshirt" and rng.random() < 0.4),
        "height": rng.uniform(0.74, 1.0), "width": rng.uniform(0.7, 1.3),
        "head": rng.uniform(0.8, 1.0), "layout": _target_layout(rng.uniform(0.47, 0.62)),
        "hat": (_colour(rng, 0.06, _TARGET_PALETTE) if rng.random() < 0.15 else None),
        "bag": (_colour(rng, 0.06, _TARGET_PALETTE) if rng.random() < 0.25 else None),
        "backpack": (_colour(rng, 0.06, _TARGET_PALETTE) if rng.random() < 0.4 else None),
        "scarf": (_colour(rng, 0.06, _TARGET_PALETTE) if rng.random() < 0.3 else None),
    }


def _target_layout(waist: float) -> tuple[float, float, float, float]:
    """Rows (body fractions) where sleeves, top, belt and shorts end; the source's: 0.5 to 0.72."""
    return waist - 0.03, waist, waist + 0.03, waist + 0.19


def _source_camera(seed: int, cam: int) -> dict:
    """Viewing conditions of one source camera."""
    rng = np.random.default_rng([seed, 21, cam])
    return {
        "cast": rng.uniform(0.78, 1.22, 3), "brightness": rng.uniform(-0.12, 0.12),
        "blur": int(rng.integers(0, 3)), "noise": rng.uniform(0.01, 0.04),
        "wall": rng.uniform(0.2, 0.8, 3), "floor": rng.uniform(0.15, 0.6, 3),
        "horizon": rng.uniform(0.45, 0.75), "clutter": int(rng.integers(2, 7)),
        "scale": rng.uniform(0.82, 1.02), "background": "flat",
    }


def _target_camera(seed: int, cam: int) -> dict:
    """Viewing conditions of one target camera: lighting regime, distance, framing, occlusion."""
    rng = np.random.default_rng([seed, 121, cam])
    tint, spread, brightness, gamma, noise = _LIGHTING[cam % len(_LIGHTING)]
    cast = np.array(tint) * rng.uniform(1 - spread, 1 + spread, 3)
    downsample = int(rng.choice([1, 1, 2, 3]))
    return {
        "cast": cast, "brightness": rng.uniform(*brightness), "gamma": rng.uniform(*gamma),
        "contrast": rng.uniform(0.7, 1.0), "noise": rng.uniform(*noise),
        "blur": int(rng.integers(0, 2)), "downsample": downsample,
        "quality": int(rng.integers(55, 80)) if downsample > 1 else int(rng.integers(75, 92)),
        "background": _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))],
        "wall": rng.uniform(0.15, 0.85, 3), "floor": rng.uniform(0.1, 0.5, 3),
        "horizon": rng.uniform(0.55, 0.85), "period": int(rng.integers(4, 12)),
        "clutter": int(rng.integers(1, 5)),
        "scale": rng.uniform(0.75, 1.08), "shift": rng.uniform(-0.05, 0.05),
        "jitter": rng.uniform(0.03, 0.05), "occlusion": rng.uniform(0.1, 0.35),
    }


def _box_blur(img: np.ndarray, radius: int) -> np.ndarray:
    """Separable box blur of the given radius with edge padding."""
    size = 2 * radius + 1
    padded = np.pad(img, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    img = sum(padded[i:i + img.shape[0]] for i in range(size)) / size
    padded = np.pad(img, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(padded[:, i:i + img.shape[1]] for i in range(size)) / size


def _downsample(img: np.ndarray, factor: int) -> np.ndarray:
    """A far camera: block means of factor x factor pixels, blown back up to the same size."""
    height, width = img.shape[:2]
    rows, cols = -(-height // factor) * factor, -(-width // factor) * factor
    padded = np.pad(img, ((0, rows - height), (0, cols - width), (0, 0)), mode="edge")
    small = padded.reshape(rows // factor, factor, cols // factor, factor, 3).mean(axis=(1, 3))
    return np.repeat(np.repeat(small, factor, axis=0), factor, axis=1)[:height, :width]


def _flat_background(cam: dict, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Source scenes: a flat wall over a floor, with boxes of random colour."""
    yy = np.arange(height, dtype=np.float32)[:, None]
    img = np.empty((height, width, 3), np.float32)
    img[:] = cam["wall"]
    img[int(cam["horizon"] * height):] = cam["floor"]
    img += (yy / height * 0.15 - 0.07)[..., None]
    for _ in range(cam["clutter"] + int(rng.integers(0, 3))):
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(-width // 5, width))
        y1, x1 = y0 + int(rng.uniform(0.05, 0.4) * height), x0 + int(rng.uniform(0.1, 0.5) * width)
        img[y0:y1, max(x0, 0):max(x1, 0)] = rng.uniform(0, 1, 3)
    return img


def _patterned_background(cam: dict, rng: np.random.Generator, height: int,
                          width: int) -> np.ndarray:
    """Target scenes: bricks, pillars or a lit shop window over pavement, poles and bushes."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.float32)
    img[:] = cam["wall"]
    period, offset = cam["period"], int(rng.integers(0, 64))
    if cam["background"] == "bricks":
        mortar = (yy % period == 0) | (((xx + offset + (yy // period) % 2 * period) %
                                        (2 * period)) == 0)
        img[mortar] = cam["wall"] * 0.6
    elif cam["background"] == "pillars":
        img[(xx + offset) % (3 * period) < period] = cam["wall"] * 0.7 + 0.2
    else:  # window: bright panes with a vertical glow
        img += (0.35 * (1 - yy / height))[..., None] * ((xx + offset) % (4 * period) > 1)[..., None]
    horizon = int(cam["horizon"] * height)
    img[horizon:] = cam["floor"] + (yy[horizon:] / height * 0.2 - 0.1)[..., None]
    for _ in range(cam["clutter"] + int(rng.integers(0, 2))):
        colour = rng.uniform(0, 1, 3)
        x0 = int(rng.integers(-width // 8, width))
        if rng.random() < 0.5:  # a pole from the top
            img[:int(rng.uniform(0.5, 1.0) * height), max(x0, 0):max(x0 + 2, 0)] = colour * 0.5
        else:  # a bush on the ground
            radius = rng.uniform(0.1, 0.3) * width
            inside = (((yy - horizon) / (1.5 * radius)) ** 2 + ((xx - x0) / radius) ** 2) <= 1
            img[inside] = colour * np.array([0.4, 0.8, 0.4])
    return np.clip(img, 0, 1)


def _texture(region: np.ndarray, ly: np.ndarray, lx: np.ndarray, ident: dict) -> None:
    """Patterns of the torso (or coat, dress) in place; ly, lx are body-relative coordinates."""
    period, colour, shape = ident["period"], ident["texture_colour"], region.shape[:2]
    if ident["texture"] == "stripes":
        region[np.broadcast_to(ly // period % 2 == 0, shape)] = colour
    elif ident["texture"] == "checks":
        region[(ly // period + lx // period) % 2 == 0] = colour
    elif ident["texture"] == "vstripes":
        region[np.broadcast_to(lx // period % 2 == 0, shape)] = colour
    elif ident["texture"] == "dots":
        region[((ly % (2 * period)) < 1.5) & ((lx % (2 * period)) < 1.5)] = colour
    elif ident["texture"] == "diagonal":
        region[((ly + lx) // period) % 2 == 0] = colour
    elif ident["texture"] == "two_tone":
        region[np.broadcast_to(ly > np.median(ly), shape)] = colour


def _draw_person(img: np.ndarray, ident: dict, cam: dict, rng: np.random.Generator) -> None:
    """Draws one person with its outfit and accessories into img, placed by the camera's box."""
    height, width = img.shape[:2]
    ph = height * 0.9 * ident["height"] * cam["scale"] * rng.uniform(0.93, 1.05)
    pw = width * 0.42 * ident["width"] * cam["scale"]
    top = (height - ph) / 2 + rng.normal(0, cam.get("jitter", 0.04)) * height \
        + cam.get("shift", 0.0) * height
    cx = width / 2 + rng.normal(0, 0.06) * width

    def rect(a, b, x0, x1, colour=None):
        """Rows top + a*ph .. top + b*ph, columns x0 .. x1, clipped; filled when colour is given."""
        r0, r1 = (min(max(round(top + f * ph), 0), height) for f in (a, b))
        c0, c1 = (min(max(round(x), 0), width) for x in (x0, x1))
        if colour is not None:
            img[r0:r1, c0:c1] = colour
        # Pixel coordinates of the region relative to the body's top centre, for patterns.
        return img[r0:r1, c0:c1], np.arange(r0, r1)[:, None] - top, np.arange(c0, c1)[None, :] - cx

    half = pw / 2
    # Rows (fractions of the body) where sleeves end, the top ends, the belt ends, shorts end.
    arms_end, waist, belt_end, shorts_end = ident.get("layout", (0.5, 0.53, 0.56, 0.72))
    if ident["backpack"] is not None:
        rect(0.17, 0.47, cx - half - 0.18 * pw, cx + half * 0.5, ident["backpack"])
    rect(0.17, arms_end, cx - half - 0.13 * pw, cx + half + 0.13 * pw,
         ident["top"] if ident["sleeves"] else ident["skin"])
    torso, ly, lx = rect(0.16, waist, cx - half, cx + half, ident["top"])
    _texture(torso, ly, lx, ident)
    if ident["texture"] == "logo":
        rect(0.24, 0.36, cx - 0.22 * pw, cx + 0.22 * pw, ident["texture_colour"])
    outfit = ident.get("outfit")
    if outfit == "jacket":  # open front: the shirt beneath shows
        rect(0.17, waist, cx - 0.14 * pw, cx + 0.14 * pw, ident["inner"])
    stride = rng.uniform(0.02, 0.14) * pw
    leg_half = 0.21 * pw
    rect(waist, belt_end, cx - half, cx + half, ident["bottom"])
    for side in (-1, 1):
        centre = cx + side * (leg_half + stride / 2)
        rect(waist, 0.95, centre - leg_half, centre + leg_half,
             ident["skin"] if outfit == "dress" else ident["bottom"])
        if ident["shorts"]:
            rect(shorts_end, 0.95, centre - leg_half, centre + leg_half, ident["skin"])
        rect(0.95, 1.0, centre - 1.2 * leg_half, centre + 1.2 * leg_half, ident["shoes"])
    if outfit in ("coat", "dress"):  # one garment from the shoulders down over the legs
        flare = 1.05 if outfit == "coat" else 1.3
        garment, ly, lx = rect(0.16, 0.8 if outfit == "coat" else 0.72, cx - flare * half,
                               cx + flare * half, ident["top"])
        _texture(garment, ly, lx, ident)
    scale = ident.get("head", 1.0)
    head_ry, head_rx = 0.075 * ph * scale, 0.33 * pw * scale
    if ident.get("long_hair"):
        rect(0.03, 0.24, cx - 1.1 * head_rx, cx + 1.1 * head_rx, ident["hair"])
    head, ly, lx = rect(0.01, 0.16, cx - head_rx, cx + head_rx)
    ly = ly - 0.085 * ph
    inside = (ly / head_ry) ** 2 + (lx / head_rx) ** 2 <= 1
    head[inside] = ident["skin"]
    head[inside & (ly < -0.35 * head_ry)] = ident["hair"]
    if ident["hat"] is not None:
        rect(-0.01, 0.05, cx - 1.25 * head_rx, cx + 1.25 * head_rx, ident["hat"])
    if ident.get("scarf") is not None:
        rect(0.15, 0.21, cx - 0.8 * half, cx + 0.8 * half, ident["scarf"])
    if ident["bag"] is not None:
        chest, ly, lx = rect(0.16, 0.5, cx - half, cx + half)
        chest[np.abs(ly - 0.17 * ph - 1.6 * (lx + half)) < 1.5] = ident["bag"]
        rect(0.45, 0.62, cx + half - 0.05 * pw, cx + half + 0.3 * pw, ident["bag"])


def _occlude(img: np.ndarray, rng: np.random.Generator) -> None:
    """Hides part of the person: a railing or car bonnet below, or a passer-by at one side."""
    height, width = img.shape[:2]
    colour = rng.uniform(0.05, 0.8, 3)
    if rng.random() < 0.5:
        y0 = int(rng.uniform(0.55, 0.8) * height)
        img[y0:] = colour
        img[y0:y0 + 2] = colour * 0.5
    else:
        band = int(rng.uniform(0.2, 0.45) * width)
        if rng.random() < 0.5:
            img[:, :band] = colour
        else:
            img[:, width - band:] = colour


def render(ident: dict, cam: dict, rng: np.random.Generator, height: int,
            width: int) -> np.ndarray:
    """One crop as uint8 (height, width, 3): background, person, occluder, camera effects."""
    if cam["background"] == "flat":
        img = _flat_background(cam, rng, height, width)
    else:
        img = _patterned_background(cam, rng, height, width)
    _draw_person(img, ident, cam, rng)
    if "occlusion" in cam and rng.random() < cam["occlusion"]:
        _occlude(img, rng)
    if rng.random() < 0.5:  # walking direction
        img = img[:, ::-1]
    img = img * cam["cast"].astype(np.float32) * rng.uniform(0.9, 1.1) + cam["brightness"]
    if "gamma" in cam:  # lighting regime: contrast around mid-grey, then the response curve
        img = np.clip(0.5 + (img - 0.5) * cam["contrast"], 0, 1) ** cam["gamma"]
    if cam["blur"]:
        img = _box_blur(img, cam["blur"])
    if cam.get("downsample", 1) > 1:
        img = _downsample(img, cam["downsample"])
    # Uniform sensor noise of the camera's standard deviation (cheaper to draw than Gaussian).
    img += cam["noise"] * 3.46 * (rng.random(img.shape, dtype=np.float32) - 0.5)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def partial(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A badly localised box, as Market's junk images are: a random corner blown up to full size."""
    height, width = pixels.shape[:2]
    y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    rows = y0 + np.arange(height) * (height // 2) // height
    cols = x0 + np.arange(width) * (width // 2) // width
    return pixels[rows][:, cols]


def identity(domain: str, seed: int, key: int) -> dict:
    """The appearance of identity `key` in `domain` ('source' or 'target'), drawn from `seed`."""
    return (_source_identity if domain == "source" else _target_identity)(seed, key)


def camera(domain: str, seed: int, cam: int) -> dict:
    """The pipeline of camera `cam` in `domain`: cast, brightness, blur, scene, framing, noise."""
    return (_source_camera if domain == "source" else _target_camera)(seed, cam)
