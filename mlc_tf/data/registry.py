"""Dataset names -> readers, and the check that a run's options fit the dataset it reads."""

from __future__ import annotations

from collections.abc import Callable

from mlc_tf.data import camstyle as camstyle_lib
from mlc_tf.data import datasets, folder, synthetic

_READERS: dict[str, Callable[..., datasets.ReidDataset]] = {
    "dukemtmc": datasets.read_dukemtmc,
    "folder": folder.read_folder,
    "market1501": datasets.read_market1501,
    "msmt17": datasets.read_msmt17,
    "synthetic": synthetic.create_dataset,
}


def names() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_READERS)


def create(name: str, data_dir: str, camstyle: bool = False,
           **options) -> datasets.ReidDataset:
    """Parses (or, for 'synthetic', generates once and parses) a dataset.

    Args:
        name: one of names().
        data_dir: folder holding the dataset folder (or the dataset folder itself; for
            'folder', the folder of images).
        camstyle: also match the CamStyle copies of the training images (market1501 and
            dukemtmc only; mlc_tf.data.camstyle), refusing other datasets before reading them.
        **options: verify_images, skip_corrupt; for 'synthetic' also the generator's options;
            for 'folder' only camera_regex or camera_from (folder.read_folder).

    Returns:
        The dataset.

    Raises:
        KeyError: unknown name (the message lists the known ones).
        DatasetError: missing or malformed dataset, or CamStyle images asked for and not there.
    """
    if name not in _READERS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(names())}")
    if not camstyle:
        return _READERS[name](data_dir, **options)
    camstyle_lib.refuse_unsupported(name)
    return camstyle_lib.with_camstyle(_READERS[name](data_dir, **options))


def check_dataset_supports(config, dataset: datasets.ReidDataset) -> None:
    """Refuses options that need what the dataset lacks: cameras, a query/gallery split, CamStyle.

    Call it as soon as the dataset is read, before any training work.

    Args:
        config: an mlc_tf.config.Config (reads cluster.camera_normalize,
            loss.mplp_camera_normalize, data.camera_aware_sampler, data.camstyle and
            train.eval_every).
        dataset: the dataset the run trains on.

    Raises:
        DatasetError: a camera option (camera_normalize, mplp_camera_normalize,
            camera_aware_sampler) with a training image of unknown camera (camid < 0),
            eval_every > 0 without query or gallery images, or camstyle without the
            dataset's CamStyle views (create(..., camstyle=True)).
    """
    if config.data.camstyle and not dataset.camstyle:
        camstyle_lib.refuse_unsupported(dataset.name)
        raise datasets.DatasetError(
            f"--camstyle needs the CamStyle images of the {dataset.name} dataset in "
            f"{dataset.root!r}, but it was read without them "
            "(mlc_tf.data.registry.create(..., camstyle=True))")
    if any(sample.camid < 0 for sample in dataset.train):
        for option, wanted in (("camera_normalize", config.cluster.camera_normalize),
                               ("mplp_camera_normalize", config.loss.mplp_camera_normalize),
                               ("camera_aware_sampler", config.data.camera_aware_sampler)):
            if wanted:
                raise datasets.DatasetError(
                    f"--{option} needs the camera of every training image, but the "
                    f"{dataset.name} dataset in {dataset.root!r} has images without one; "
                    f"{folder.CAMERA_HINT}, or set --{option}=false")
    if config.train.eval_every > 0 and not (dataset.query and dataset.gallery):
        raise datasets.DatasetError(
            f"--eval_every={config.train.eval_every} needs query and gallery images, but the "
            f"{dataset.name} dataset in {dataset.root!r} has none (for --dataset=folder: "
            "query/ and gallery/ sub-folders with Market-style names PPPP_cC...); "
            "set --eval_every=0")
