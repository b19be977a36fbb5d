"""Built-in synthetic re-ID set: procedural pedestrian crops written once in the Market-1501 layout.

Identities come in look-alike families that share clothing colours and differ in texture
(plain, stripes, checks, logo), body shape and accessories (hat, bag, backpack), so colour
alone is confusable. Each identity is seen by several cameras, and each camera has its own
colour cast, brightness, blur, background clutter and framing, so raw pixels match poorly.
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
_FAMILY_SIZE = 4
_TEXTURES = ("plain", "stripes", "checks", "logo")
# Clothing palette (RGB in [0, 1]): few colours, so unrelated families collide too.
_PALETTE = np.array([
    [0.1, 0.1, 0.12], [0.85, 0.85, 0.85], [0.55, 0.1, 0.1], [0.1, 0.2, 0.5], [0.2, 0.45, 0.2],
    [0.85, 0.75, 0.2], [0.5, 0.5, 0.52], [0.45, 0.3, 0.15], [0.9, 0.45, 0.15], [0.45, 0.2, 0.5],
    [0.15, 0.55, 0.6], [0.85, 0.55, 0.65], [0.25, 0.25, 0.35], [0.7, 0.65, 0.5]], np.float32)
_SKIN = np.array([[0.95, 0.8, 0.65], [0.8, 0.6, 0.45], [0.55, 0.38, 0.25], [0.35, 0.22, 0.15]],
                 np.float32)


def _colour(rng: np.random.Generator, jitter: float = 0.06) -> np.ndarray:
    return np.clip(_PALETTE[rng.integers(len(_PALETTE))] + rng.normal(0, jitter, 3), 0, 1)


def _identity(seed: int, pid: int) -> dict:
    """Appearance of one identity: family colours plus its own texture, shape and accessories."""
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


def _camera(seed: int, cam: int) -> dict:
    """Viewing conditions of one camera."""
    rng = np.random.default_rng([seed, 21, cam])
    return {
        "cast": rng.uniform(0.78, 1.22, 3), "brightness": rng.uniform(-0.12, 0.12),
        "blur": int(rng.integers(0, 3)), "noise": rng.uniform(0.01, 0.04),
        "wall": rng.uniform(0.2, 0.8, 3), "floor": rng.uniform(0.15, 0.6, 3),
        "horizon": rng.uniform(0.45, 0.75), "clutter": int(rng.integers(2, 7)),
        "scale": rng.uniform(0.82, 1.02),
    }


def _box_blur(img: np.ndarray, radius: int) -> np.ndarray:
    """Separable box blur of the given radius with edge padding."""
    size = 2 * radius + 1
    padded = np.pad(img, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    img = sum(padded[i:i + img.shape[0]] for i in range(size)) / size
    padded = np.pad(img, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(padded[:, i:i + img.shape[1]] for i in range(size)) / size


def _render(ident: dict, cam: dict, rng: np.random.Generator, height: int,
            width: int) -> np.ndarray:
    """One crop as uint8 (height, width, 3): background, person, accessories, camera effects."""
    yy = np.arange(height, dtype=np.float32)[:, None]
    img = np.empty((height, width, 3), np.float32)
    img[:] = cam["wall"]
    img[int(cam["horizon"] * height):] = cam["floor"]
    img += (yy / height * 0.15 - 0.07)[..., None]
    for _ in range(cam["clutter"] + int(rng.integers(0, 3))):
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(-width // 5, width))
        y1, x1 = y0 + int(rng.uniform(0.05, 0.4) * height), x0 + int(rng.uniform(0.1, 0.5) * width)
        img[y0:y1, max(x0, 0):max(x1, 0)] = rng.uniform(0, 1, 3)

    ph = height * 0.9 * ident["height"] * cam["scale"] * rng.uniform(0.93, 1.05)
    pw = width * 0.42 * ident["width"] * cam["scale"]
    top = (height - ph) / 2 + rng.normal(0, 0.04) * height
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
    if ident["backpack"] is not None:
        rect(0.17, 0.47, cx - half - 0.18 * pw, cx + half * 0.5, ident["backpack"])
    rect(0.17, 0.5, cx - half - 0.13 * pw, cx + half + 0.13 * pw,
         ident["top"] if ident["sleeves"] else ident["skin"])
    torso, ly, lx = rect(0.16, 0.53, cx - half, cx + half, ident["top"])
    period = ident["period"]
    if ident["texture"] == "stripes":
        torso[np.broadcast_to(ly // period % 2 == 0, torso.shape[:2])] = ident["texture_colour"]
    elif ident["texture"] == "checks":
        torso[(ly // period + lx // period) % 2 == 0] = ident["texture_colour"]
    elif ident["texture"] == "logo":
        rect(0.24, 0.36, cx - 0.22 * pw, cx + 0.22 * pw, ident["texture_colour"])
    stride = rng.uniform(0.02, 0.14) * pw
    leg_half = 0.21 * pw
    rect(0.53, 0.56, cx - half, cx + half, ident["bottom"])
    for side in (-1, 1):
        centre = cx + side * (leg_half + stride / 2)
        rect(0.53, 0.95, centre - leg_half, centre + leg_half, ident["bottom"])
        if ident["shorts"]:
            rect(0.72, 0.95, centre - leg_half, centre + leg_half, ident["skin"])
        rect(0.95, 1.0, centre - 1.2 * leg_half, centre + 1.2 * leg_half, ident["shoes"])
    head_ry, head_rx = 0.075 * ph, 0.33 * pw
    head, ly, lx = rect(0.01, 0.16, cx - head_rx, cx + head_rx)
    ly = ly - 0.085 * ph
    inside = (ly / head_ry) ** 2 + (lx / head_rx) ** 2 <= 1
    head[inside] = ident["skin"]
    head[inside & (ly < -0.35 * head_ry)] = ident["hair"]
    if ident["hat"] is not None:
        rect(-0.01, 0.05, cx - 1.25 * head_rx, cx + 1.25 * head_rx, ident["hat"])
    if ident["bag"] is not None:
        chest, ly, lx = rect(0.16, 0.5, cx - half, cx + half)
        chest[np.abs(ly - 0.17 * ph - 1.6 * (lx + half)) < 1.5] = ident["bag"]
        rect(0.45, 0.62, cx + half - 0.05 * pw, cx + half + 0.3 * pw, ident["bag"])
    if rng.random() < 0.5:  # walking direction
        img = img[:, ::-1]
    img = img * cam["cast"].astype(np.float32) * rng.uniform(0.9, 1.1) + cam["brightness"]
    if cam["blur"]:
        img = _box_blur(img, cam["blur"])
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
    rng = np.random.default_rng([seed, 31])
    plan = []
    frame = {"bounding_box_train": 0, "query": 0, "bounding_box_test": 0}

    def add(folder, key, pid, cam, k):
        frame[folder] += 1
        plan.append((folder, _file_name(pid, cam, frame[folder]), key, pid, cam, k))

    first_test = params["num_train_ids"] + 1
    for pid in range(1, first_test + params["num_test_ids"]):
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
             images_per_camera: int = 6, num_cameras: int = 6, cameras_per_id: int = 4,
             height: int = 128, width: int = 64, seed: int = 0) -> str:
    """Writes the synthetic set under `root` once, in the Market-1501 layout; returns its folder.

    Generation goes to a temporary folder renamed into place at the end, so an interrupted run
    never leaves a half-written set; an existing finished folder is reused untouched.

    Args:
        root: cache folder (created if missing).
        num_train_ids: training identities (pids 1..num_train_ids).
        num_test_ids: test identities (the pids after the training ones).
        images_per_camera: images of an identity per camera that sees it.
        num_cameras: cameras in the scene.
        cameras_per_id: each identity is seen by this many cameras, or one fewer (at least 2).
        height: image height in pixels.
        width: image width in pixels.
        seed: random seed; the same parameters give byte-identical files.

    Returns:
        Path of the dataset folder (holding bounding_box_train/, query/, bounding_box_test/).

    Raises:
        ValueError: parameters out of range.
    """
    params = dict(num_train_ids=num_train_ids, num_test_ids=num_test_ids,
                  images_per_camera=images_per_camera, num_cameras=num_cameras,
                  cameras_per_id=cameras_per_id, height=height, width=width, seed=seed)
    if min(num_train_ids, num_test_ids, images_per_camera) < 1 or num_cameras < 2 \
            or not 2 <= cameras_per_id <= num_cameras or height < 16 or width < 8:
        raise ValueError(f"synthetic parameters out of range: {params} (need ids and images >= 1, "
                         "2 <= cameras_per_id <= num_cameras, height >= 16, width >= 8)")
    final = os.path.join(root, cache_name(params))
    if os.path.isdir(final):
        return final
    os.makedirs(root, exist_ok=True)
    temp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(final)}-", dir=root)
    try:
        for folder in ("bounding_box_train", "query", "bounding_box_test"):
            os.mkdir(os.path.join(temp, folder))
        cameras = [_camera(seed, c) for c in range(num_cameras)]
        identities: dict[int, dict] = {}
        for folder, name, key, pid, cam, k in _plan(params):
            if key not in identities:
                identities[key] = _identity(seed, key)
            rng = np.random.default_rng([seed, 41, key, cam, k])
            pixels = _render(identities[key], cameras[cam], rng, height, width)
            if pid == -1:
                pixels = _partial(pixels, rng)
            with open(os.path.join(temp, folder, name), "wb") as f:
                f.write(tf.io.encode_jpeg(pixels, quality=92).numpy())
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
        ValueError: generator parameters out of range.
        TypeError: an unknown generator option.
    """
    folder = generate(os.path.join(data_dir, "synthetic"), **params)
    # The folder records every parameter, defaults included; a split may miss a camera.
    with open(os.path.join(folder, _PARAMS_FILE)) as f:
        num_cameras = json.load(f)["num_cameras"]
    return datasets.parse_market_layout(
        "synthetic", folder, datasets.MARKET_LAYOUT, num_cameras,
        verify_images=verify_images, skip_corrupt=skip_corrupt)
