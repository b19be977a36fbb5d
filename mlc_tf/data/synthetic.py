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
from mlc_tf.data import drawing

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
        cameras = [drawing.camera(domain, seed, c) for c in range(num_cameras)]
        identities: dict[int, dict] = {}
        for folder, name, key, pid, cam, k in _plan(params):
            if key not in identities:
                identities[key] = drawing.identity(domain, seed, key)
            rng = np.random.default_rng([seed, 41 + _STREAM_OFFSET[domain], key, cam, k])
            pixels = drawing.render(identities[key], cameras[cam], rng, height, width)
            if pid == -1:
                pixels = drawing.partial(pixels, rng)
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
