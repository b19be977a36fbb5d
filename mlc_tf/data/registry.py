"""Dataset names -> readers: Market-1501, DukeMTMC-reID, MSMT17 and the built-in synthetic set."""

from __future__ import annotations

from collections.abc import Callable

from mlc_tf.data import datasets, synthetic

_READERS: dict[str, Callable[..., datasets.ReidDataset]] = {
    "dukemtmc": datasets.read_dukemtmc,
    "market1501": datasets.read_market1501,
    "msmt17": datasets.read_msmt17,
    "synthetic": synthetic.create_dataset,
}


def names() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_READERS)


def create(name: str, data_dir: str, **options) -> datasets.ReidDataset:
    """Parses (or, for 'synthetic', generates once and parses) a dataset.

    Args:
        name: one of names().
        data_dir: folder holding the dataset folder (or the dataset folder itself).
        **options: verify_images, skip_corrupt; for 'synthetic' also the generator's options.

    Returns:
        The dataset.

    Raises:
        KeyError: unknown name (the message lists the known ones).
        DatasetError: missing or malformed dataset.
    """
    if name not in _READERS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(names())}")
    return _READERS[name](data_dir, **options)
