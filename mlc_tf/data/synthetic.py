"""Built-in synthetic re-ID sets: procedural pedestrian crops of two domains, Market-1501 layout.

Identities come in look-alike families that share clothing colours and differ in texture, body
shape and accessories, so colour alone is confusable. Each identity is seen by several cameras,
and each camera has its own colour cast, brightness, blur, background and framing, so raw pixels
match poorly.

Domain 'source' (the default): 6 cameras, flat walls and floors with box clutter, mild casts,
shirts and trousers (plain, stripes, checks, logo), hats, bags and backpacks.
Domain 'target': a different set of people and cameras for domain adaptation: 8 cameras under
day, overcast, night and sodium-lamp lighting (gamma, contrast, strong casts and noise), some
far away (downsampled, heavier JPEG), loose or tight boxes, people partly hidden by railings,
cars or passers-by, brick, pillar and shop-window backgrounds with poles and bushes; coats,
open jackets, dresses and t-shirts in another palette (vertical stripes, dots, diagonals,
two-tone), long hair, scarves, a wider range of heights, builds and torso lengths. Its pids
start at 5001, so they never meet the source's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from mlc_tf.data import datasets

# Bump when the drawing changes, so old caches are not reused.
_VERSION = 1
_PARAMS_FILE = "params.json"
DOMAINS = ("source", "target")
# Per domain: first pid, default camera count, offset of its random-stream tags.
_FIRST_PID = {"source": 1, "target": 5001}
_DEFAULT_CAMERAS = {"source": 6, "target": 8}
_STREAM_OFFSET = {"source": 0, "target": 100}
# Identities of one domain (train + test), so the source's pids stay below the target's and
# every pid has 4 digits.
_MAX_IDS = 4999
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


def _identity(seed: int, pid: int) -> dict:
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


def _camera(seed: int, cam: int) -> dict:
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


def _render(ident: dict, cam: dict, rng: np.random.Generator, height: int,
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


def _partial(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A badly localised box, as Market's junk images are: a random corner blown up to full size."""
    height, width = pixels.shape[:2]
    y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    rows = y0 + np.arange(height) * (height // 2) // height
    cols = x0 + np.arange(width) * (width // 2) // width
    return pixels[rows][:, cols]


def _file_name(pid: int, cam: int, frame: int) -> str:
    person = f"{pid:04d}" if pid >= 0 else str(pid)
    return f"{person}_c{cam + 1}s1_{frame:06d}_00.jpg"


def _plan(params: dict) -> list[tuple[str, str, int, int, int, int]]:
    """(folder, file name, identity key, pid, camera, image number) of every image.

    The identity key is the pid for real identities and a fresh number for each distractor and
    junk image, so every image's appearance depends on its key, camera and number only.
    """
    seed, num_cameras = params["seed"], params["num_cameras"]
    per_cam, max_cams = params["images_per_camera"], params["cameras_per_id"]
    domain = params.get("domain", "source")
    rng = np.random.default_rng([seed, 31 + _STREAM_OFFSET[domain]])
    plan = []
    frame = {"bounding_box_train": 0, "query": 0, "bounding_box_test": 0}

    def add(folder, key, pid, cam, k):
        frame[folder] += 1
        plan.append((folder, _file_name(pid, cam, frame[folder]), key, pid, cam, k))

    first_pid = _FIRST_PID[domain]
    first_test = first_pid + params["num_train_ids"]
    for pid in range(first_pid, first_test + params["num_test_ids"]):
        count = int(rng.integers(max(2, max_cams - 1), max_cams + 1))
        cams = sorted(rng.choice(num_cameras, count, replace=False).tolist())
        no_query = int(rng.choice(cams))
        for cam in cams:
            for k in range(per_cam):
                if pid < first_test:
                    folder = "bounding_box_train"
                else:
                    folder = "query" if (k == 0 and cam != no_query) else "bounding_box_test"
                add(folder, pid, pid, cam, k)
    # Distractors (pid 0) and junk (pid -1): one-off people, seen once, in the gallery folder.
    extra = first_test + params["num_test_ids"]
    num_distractors = max(1, params["num_test_ids"] // 2)
    for i in range(num_distractors):
        add("bounding_box_test", extra + i, 0, int(rng.integers(num_cameras)), 0)
    for i in range(max(1, params["num_test_ids"] // 4)):
        add("bounding_box_test", extra + num_distractors + i, -1, int(rng.integers(num_cameras)), 0)
    return plan


def cache_name(params: dict) -> str:
    """Folder name of a parameter set: the main sizes, readable, and a short hash of them all."""
    digest = hashlib.sha256(json.dumps({**params, "version": _VERSION}, sort_keys=True)
                            .encode()).hexdigest()[:10]
    return (f"ids{params['num_train_ids']}-{params['num_test_ids']}_cam{params['num_cameras']}_"
            f"{params['height']}x{params['width']}_seed{params['seed']}_{digest}")


def generate(root: str, *, num_train_ids: int = 64, num_test_ids: int = 64,
             images_per_camera: int = 6, num_cameras: int | None = None, cameras_per_id: int = 4,
             height: int = 128, width: int = 64, seed: int = 0, domain: str = "source") -> str:
    """Writes the synthetic set under `root` once, in the Market-1501 layout; returns its folder.

    Generation goes to a temporary folder renamed into place at the end, so an interrupted run
    never leaves a half-written set; an existing finished folder is reused untouched.

    Args:
        root: cache folder (created if missing).
        num_train_ids: training identities (the domain's first pids: 1.. or 5001..).
        num_test_ids: test identities (the pids after the training ones).
        images_per_camera: images of an identity per camera that sees it.
        num_cameras: cameras in the scene; None for the domain's own (source 6, target 8).
        cameras_per_id: each identity is seen by this many cameras, or one fewer (at least 2).
        height: image height in pixels.
        width: image width in pixels.
        seed: random seed; the same parameters give byte-identical files.
        domain: 'source' (the default set) or 'target' (other people, cameras and scenes; see
            the module docstring).

    Returns:
        Path of the dataset folder (holding bounding_box_train/, query/, bounding_box_test/).

    Raises:
        ValueError: parameters out of range or an unknown domain.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; known: {', '.join(DOMAINS)}")
    if num_cameras is None:
        num_cameras = _DEFAULT_CAMERAS[domain]
    params = dict(num_train_ids=num_train_ids, num_test_ids=num_test_ids,
                  images_per_camera=images_per_camera, num_cameras=num_cameras,
                  cameras_per_id=cameras_per_id, height=height, width=width, seed=seed)
    if domain != "source":  # the source's parameters, and so its cache folder, predate domains
        params["domain"] = domain
    if min(num_train_ids, num_test_ids, images_per_camera) < 1 or num_cameras < 2 \
            or not 2 <= cameras_per_id <= num_cameras or height < 16 or width < 8 \
            or num_train_ids + num_test_ids > _MAX_IDS:
        raise ValueError(f"synthetic parameters out of range: {params} (need ids and images >= 1, "
                         f"num_train_ids + num_test_ids <= {_MAX_IDS}, "
                         "2 <= cameras_per_id <= num_cameras, height >= 16, width >= 8)")
    final = os.path.join(root, cache_name(params))
    if os.path.isdir(final):
        return final
    os.makedirs(root, exist_ok=True)
    temp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(final)}-", dir=root)
    try:
        for folder in ("bounding_box_train", "query", "bounding_box_test"):
            os.mkdir(os.path.join(temp, folder))
        draw_identity, draw_camera = ((_identity, _camera) if domain == "source" else
                                      (_target_identity, _target_camera))
        cameras = [draw_camera(seed, c) for c in range(num_cameras)]
        identities: dict[int, dict] = {}
        for folder, name, key, pid, cam, k in _plan(params):
            if key not in identities:
                identities[key] = draw_identity(seed, key)
            rng = np.random.default_rng([seed, 41 + _STREAM_OFFSET[domain], key, cam, k])
            pixels = _render(identities[key], cameras[cam], rng, height, width)
            if pid == -1:
                pixels = _partial(pixels, rng)
            quality = cameras[cam].get("quality", 92)
            with open(os.path.join(temp, folder, name), "wb") as f:
                f.write(tf.io.encode_jpeg(pixels, quality=quality).numpy())
        with open(os.path.join(temp, _PARAMS_FILE), "w") as f:
            json.dump({**params, "version": _VERSION}, f, indent=1, sort_keys=True)
        os.rename(temp, final)
    except OSError:
        # Another process may have finished the same set first; its copy is as good as ours.
        shutil.rmtree(temp, ignore_errors=True)
        if not os.path.isdir(final):
            raise
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return final


def create_dataset(data_dir: str, *, verify_images: bool = False, skip_corrupt: bool = False,
                   **params) -> datasets.ReidDataset:
    """Generates (if needed) `<data_dir>/synthetic/<name>/` and parses it with the Market reader.

    Args:
        data_dir: data folder; created if missing.
        verify_images: check every JPEG (see datasets.parse_market_layout).
        skip_corrupt: skip corrupt images with a warning.
        **params: options of generate().

    Returns:
        The dataset, named 'synthetic'.

    Raises:
        ValueError: generator parameters out of range, or an unknown domain.
        TypeError: an unknown generator option.
    """
    folder = generate(os.path.join(data_dir, "synthetic"), **params)
    # The folder records every parameter, defaults included; a split may miss a camera.
    with open(os.path.join(folder, _PARAMS_FILE)) as f:
        num_cameras = json.load(f)["num_cameras"]
    return datasets.parse_market_layout(
        "synthetic", folder, datasets.MARKET_LAYOUT, num_cameras,
        verify_images=verify_images, skip_corrupt=skip_corrupt)
