"""Datasets for training (registry ``dataset``), chosen by a short spec string.

A dataset spec is ``NAME``, ``NAME:PATH`` or either followed by options,
``NAME[:PATH][?KEY=VALUE[&KEY=VALUE...]]``. Option values are read as ``true``/``false``,
integers, floats, or else kept as text; keyword arguments of :func:`load_dataset` give the same
options and win over the spec's. In names, ``-`` and ``_`` are the same (``fashion-mnist`` is the
registered ``fashion_mnist``). Built-ins (nothing is ever downloaded):

* ``digits`` (the default): scikit-learn's bundled 8x8 digits, 1797 images, 10 classes, pixels
  scaled to [0, 1] (``/ 16``); stratified seeded split, with the default fractions and any seed
  1258 train / 180 validation / 359 test;
* ``mnist:PATH``, ``fashion-mnist:PATH``: the four standard IDX files (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
  optionally ``.gz``) in the folder PATH; pixels ``/ 255``; test = the t10k files; validation =
  a stratified seeded ``val_fraction`` of the training files (``test_fraction`` is not used);
* ``cifar10:PATH``: the official CIFAR-10 binary version (``data_batch_1.bin`` ...
  ``data_batch_5.bin``, ``test_batch.bin``: records of a label byte and 3072 pixel bytes) in the
  folder PATH or its ``cifar-10-batches-bin``; else the python version (``data_batch_1`` ...,
  ``test_batch``), read by a restricted unpickler that accepts only plain containers, bytes,
  numbers and numpy arrays; images ``(3, 32, 32)``, pixels ``/ 255``; test = ``test_batch``;
  validation as for MNIST;
* ``csv:PATH``: a header row, numeric feature columns and a label column (option ``label``,
  default ``label``); integer or text labels make a classification task (classes in sorted order),
  other numbers a regression task; ``task=classification|regression`` forces one; options
  ``delimiter`` (one character or ``tab``) and ``scale`` (``none``, ``minmax``, ``standard``:
  feature scaling from train statistics);
* ``synthetic-regression``: ``sklearn.datasets.make_regression`` seeded with ``seed``; defaults of
  the TT regression experiment (256 samples, 4096 features, 128 informative (at most
  ``n_features``), 16 targets, noise 0.0); features and targets standardised with train statistics.

Split fractions are options of every dataset (``digits?val_fraction=0.2&test_fraction=0.1``,
defaults 0.1 and 0.2), fractions of all labelled examples: ``round(test_fraction * n)`` go to
the test split, ``round(val_fraction * n)`` to the validation split and the rest to training. A
fraction of 0 makes no such split (a run then reports it as absent); a fraction too small for
the data to give one example is refused. With a classification task the split is stratified
(every class in about the same proportion in each split). The same seed gives the same split.

``synthetic-regression`` options: ``n_samples`` (256), ``n_features`` (4096), ``n_informative``
(128, at most ``n_features``), ``n_targets`` (16), ``noise`` (0.0), and the split fractions.

Examples
--------
>>> ds = load_dataset("digits")
>>> ds.x_train.shape, ds.y_train.dtype, ds.n_classes
(torch.Size([1258, 8, 8]), torch.int64, 10)
>>> parse_dataset_spec("csv:data/iris.csv?label=species&scale=minmax")
DataSpec(name='csv', path='data/iris.csv', options={'label': 'species', 'scale': 'minmax'})
>>> xb, yb = next(iter(ds.loader("train", batch_size=32)))
>>> tuple(xb.shape), tuple(yb.shape)
((32, 8, 8), (32,))
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from tngraph.errors import TNGraphError, did_you_mean
from tngraph.kinds import DATASETS, DataRequest, DataSource, list_datasets, register_dataset

__all__ = [
    "CIFAR10", "CSV", "DATASETS", "DEFAULT_DATASET", "DIGITS", "FASHION_MNIST", "MNIST", "SPLITS",
    "SYNTHETIC_REGRESSION", "TASKS", "DataError", "DataRequest", "DataSource", "DataSpec",
    "Dataset", "get_dataset", "list_datasets", "load_dataset", "make_dataset",
    "parse_dataset_spec", "read_cifar10_bin", "read_cifar10_pickle", "read_idx",
    "register_dataset", "restricted_unpickle", "split_indices",
]

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader

#: the dataset used when none is named
DEFAULT_DATASET = "digits"
SPLITS = ("train", "val", "test")
TASKS = ("classification", "regression")
#: the largest finite float32: features beyond it would be read as inf
FLOAT32_MAX = float(np.finfo(np.float32).max)


class DataError(TNGraphError):
    """A dataset is unknown, missing or malformed (a user error: CLI exit code 2)."""


# ---------------------------------------------------------------------------------------------
# the dataset value


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: three splits of torch tensors and what they hold.

    Features are float32 of shape ``(n, *feature_shape)`` (images scaled to [0, 1]); labels are
    int64 class ids ``(n,)`` for classification, float32 ``(n, *target_shape)`` for regression.

    Examples
    --------
    >>> ds = load_dataset("digits")
    >>> ds.sizes
    {'train': 1258, 'val': 180, 'test': 359}
    >>> x, y = ds.split("val")
    >>> float(x.max()) <= 1.0
    True
    """

    name: str
    task: Literal["classification", "regression"]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int | None
    feature_shape: tuple[int, ...]
    description: str = ""
    #: names of the class ids 0..n_classes-1 (classification), e.g. ``("cat", "dog")``
    class_names: tuple[str, ...] | None = None
    #: shape of one regression target: ``()`` for one value per example, ``(16,)`` for 16
    target_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        import torch

        where = f"dataset '{self.name}'"
        if self.task not in TASKS:
            raise DataError(f"{where}: task {self.task!r} is not one of {', '.join(TASKS)}")
        object.__setattr__(self, "feature_shape", tuple(int(d) for d in self.feature_shape))
        object.__setattr__(self, "target_shape", tuple(int(d) for d in self.target_shape))
        classification = self.task == "classification"
        if classification and (self.n_classes is None or self.n_classes < 1):
            raise DataError(f"{where}: a classification dataset needs n_classes >= 1")
        if classification and self.target_shape:
            raise DataError(f"{where}: class labels have no target_shape")
        if self.class_names is not None and len(self.class_names) != self.n_classes:
            raise DataError(f"{where}: {len(self.class_names)} class names for "
                            f"{self.n_classes} classes")
        for split in SPLITS:
            x, y = self.split(split)
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise DataError(f"{where}: the {split} split must hold torch tensors")
            if x.dtype != torch.float32 or tuple(x.shape[1:]) != self.feature_shape:
                raise DataError(f"{where}: x_{split} is {x.dtype} {tuple(x.shape)}; expected "
                                f"float32 (n, {', '.join(map(str, self.feature_shape))})")
            if x.shape[0] != y.shape[0]:
                raise DataError(f"{where}: x_{split} has {x.shape[0]} rows but y_{split} has "
                                f"{y.shape[0]}")
            expected_dtype = torch.int64 if classification else torch.float32
            if y.dtype != expected_dtype or tuple(y.shape[1:]) != self.target_shape:
                raise DataError(f"{where}: y_{split} is {y.dtype} {tuple(y.shape)}; expected "
                                f"{expected_dtype} (n, {', '.join(map(str, self.target_shape))})")
            if classification and y.numel() and (int(y.min()) < 0
                                                 or int(y.max()) >= self.n_classes):
                raise DataError(f"{where}: y_{split} holds labels outside 0..{self.n_classes - 1}")

    # -- access ----------------------------------------------------------------------------
    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of the split ``name`` (``train``, ``val`` or ``test``)."""
        if name not in SPLITS:
            raise DataError(f"unknown split '{name}'; {did_you_mean(name, SPLITS)}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    @property
    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {s: int(self.split(s)[0].shape[0]) for s in SPLITS}

    def fingerprint(self) -> dict[str, str]:
        """A SHA-256 of each split's rows (features, then labels, with their shapes), hex.

        A run records it: a dataset file changed after training, or a split made otherwise,
        shows up as a different hash for the split it changed (see ``tngraph.train``).

        Examples
        --------
        >>> sorted(load_dataset("digits").fingerprint())
        ['test', 'train', 'val']
        """
        import hashlib

        if "_fingerprint" in self.__dict__:      # hashed once per loaded dataset
            return dict(self.__dict__["_fingerprint"])
        hashes = {}
        for name in SPLITS:
            digest = hashlib.sha256()
            for tensor in self.split(name):
                digest.update(repr((str(tensor.dtype), tuple(tensor.shape))).encode())
                digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
            hashes[name] = digest.hexdigest()
        self.__dict__["_fingerprint"] = hashes    # frozen: set past __setattr__
        return dict(hashes)

    @property
    def n_features(self) -> int:
        """Number of scalar features of one example (the product of ``feature_shape``)."""
        return math.prod(self.feature_shape)

    def loader(self, split: str = "train", batch_size: int = 64, *, shuffle: bool | None = None,
               seed: int = 0, drop_last: bool = False) -> DataLoader:
        """A torch ``DataLoader`` of ``(x, y)`` batches over one split.

        ``shuffle`` defaults to True for ``train`` only; a shuffled loader draws its order from
        a generator seeded with ``seed``, so a run is repeatable and each epoch (each ``iter``)
        visits every example of the split once, in a new order.

        Examples
        --------
        >>> ds = load_dataset("digits")
        >>> [len(y) for _, y in ds.loader("val", batch_size=64)]
        [64, 64, 52]
        """
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        x, y = self.split(split)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if shuffle is None:
            shuffle = split == "train"
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle,
                          generator=generator, drop_last=drop_last)

    def summary(self) -> str:
        """A few lines for people: task, shapes, split sizes, description."""
        shape = "x".join(map(str, self.feature_shape)) or "scalar"
        if self.task == "classification":
            what = f"classification, {self.n_classes} classes"
        else:
            target = "x".join(map(str, self.target_shape)) or "1"
            what = f"regression, target {target}"
        sizes = "  ".join(f"{s} {n}" for s, n in self.sizes.items())
        lines = [f"{self.name}: {what}, features {shape}", f"  {sizes}"]
        if self.description:
            lines.append(f"  {self.description}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# spec strings and the registry


@dataclass(frozen=True)
class DataSpec:
    """A parsed dataset spec ``NAME[:PATH][?KEY=VALUE&...]``."""

    name: str
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def _option_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_dataset_spec(spec: str) -> DataSpec:
    """Split ``NAME[:PATH][?KEY=VALUE&...]`` into its parts (no look-up, no file access).

    Options start at the last ``?``; a path holding ``?`` cannot be given with this syntax.

    Examples
    --------
    >>> parse_dataset_spec("mnist:~/data/mnist")
    DataSpec(name='mnist', path='~/data/mnist', options={})
    >>> parse_dataset_spec("synthetic-regression?n_samples=512&noise=0.5").options
    {'n_samples': 512, 'noise': 0.5}
    """
    if not isinstance(spec, str):
        raise DataError(f"a dataset spec must be a string NAME[:PATH][?KEY=VALUE&...], got "
                        f"{type(spec).__name__}")
    if not spec.strip():
        raise DataError(f"empty dataset spec {spec!r}; expected NAME[:PATH][?KEY=VALUE&...]")
    head, sep, query = spec.strip().rpartition("?")
    if not sep:
        head, query = query, ""
    name, colon, path = head.partition(":")
    name = name.strip()
    if not name:
        raise DataError(f"dataset spec {spec!r} names no dataset; "
                        "expected NAME[:PATH][?KEY=VALUE&...]")
    if colon and not path.strip():
        raise DataError(f"dataset spec {spec!r} has an empty path after ':'")
    options: dict[str, Any] = {}
    for item in query.split("&") if query else ():
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise DataError(f"dataset spec {spec!r}: option {item!r} is not KEY=VALUE")
        if key in options:
            raise DataError(f"dataset spec {spec!r}: option '{key}' given twice")
        options[key] = _option_value(value)
    return DataSpec(name, path.strip() if colon else None, options)


def _registered_name(name: str) -> str | None:
    for candidate in (name, name.replace("-", "_")):
        if candidate in DATASETS:
            return candidate
    return None


def get_dataset(name: str) -> DataSource:
    """The data source called ``name`` (``-`` may stand for ``_``); DataError if unknown."""
    key = _registered_name(name)
    if key is None:
        info = {i.name: i for i in DATASETS.info()}.get(name.replace("-", "_"))
        if info is not None and info.error:
            raise DataError(f"dataset plugin '{info.name}' failed to load: {info.error}")
        raise DataError(f"unknown dataset '{name}'; "
                        f"{did_you_mean(name.replace('-', '_'), DATASETS.list())}")
    return DATASETS.get(key)


def _check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1 \
            or 0 < value < 1e-9:
        raise DataError(f"{name} must be 0 or a number from 1e-9 to below 1, got {value!r}")
    return float(value)


#: the split options every dataset takes (``?val_fraction=0.2&test_fraction=0``)
SPLIT_OPTIONS = {"val_fraction": 0.1, "test_fraction": 0.2}


def load_dataset(spec: str = DEFAULT_DATASET, *, seed: int = 0,
                 val_fraction: float | None = None, test_fraction: float | None = None,
                 **options: Any) -> Dataset:
    """Load the dataset named by ``spec`` (see the module docstring for the syntax).

    Parameters
    ----------
    spec
        ``NAME[:PATH][?KEY=VALUE&...]``, e.g. ``digits``, ``mnist:~/data/mnist``,
        ``csv:runs/x.csv?label=y``.
    seed
        Seeds the split (and generated data); the same seed gives the same dataset.
    val_fraction, test_fraction
        Fractions of the labelled examples for validation and test (a dataset with its own
        test files, like MNIST, ignores ``test_fraction``).
    **options
        Data source options; they override those of the spec.

    Examples
    --------
    >>> load_dataset("synthetic-regression", n_samples=100, n_features=8).sizes
    {'train': 70, 'val': 10, 'test': 20}
    >>> load_dataset("digitz")
    Traceback (most recent call last):
    ...
    tngraph.data.DataError: unknown dataset 'digitz'; did you mean 'digits'? valid: cifar10, csv, \
digits, fashion_mnist, mnist, synthetic_regression
    """
    parsed = parse_dataset_spec(spec)
    source = get_dataset(parsed.name)
    merged = {**parsed.options, **options}
    fractions = {key: merged.pop(key, default) for key, default in SPLIT_OPTIONS.items()}
    if val_fraction is not None:
        fractions["val_fraction"] = val_fraction
    if test_fraction is not None:
        fractions["test_fraction"] = test_fraction
    unknown = sorted(set(merged) - set(source.options))
    if unknown:
        hint = did_you_mean(unknown[0], [*source.options, *SPLIT_OPTIONS])
        raise DataError(f"dataset '{parsed.name}' has no option '{unknown[0]}'; {hint}")
    if parsed.path is None and source.path == "required":
        raise DataError(f"dataset '{parsed.name}' needs a path: {parsed.name}:PATH "
                        f"({source.path_help}); tngraph never downloads data")
    if parsed.path is not None and source.path == "none":
        raise DataError(f"dataset '{parsed.name}' takes no path, got '{parsed.path}'")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise DataError(f"the data seed must be an integer from 0 to 2**32 - 1, got {seed!r}")
    val = _check_fraction("val_fraction", fractions["val_fraction"])
    test = _check_fraction("test_fraction", fractions["test_fraction"])
    if val + test >= 1:
        raise DataError(f"val_fraction + test_fraction must be below 1, got {val} + {test}")
    path = Path(parsed.path).expanduser() if parsed.path is not None else None
    request = DataRequest(parsed.name, path, merged, seed, val, test)
    dataset = source.load(request)
    if not isinstance(dataset, Dataset):
        raise DataError(f"dataset '{parsed.name}' returned {type(dataset).__name__}, "
                        "expected a tngraph.data.Dataset")
    return dataset


# ---------------------------------------------------------------------------------------------
# splitting and building


def split_indices(n: int, *, val_fraction: float, test_fraction: float, seed: int,
                  stratify: Sequence[Any] | np.ndarray | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded ``(train, val, test)`` index arrays (each sorted) over ``range(n)``.

    ``round(test_fraction * n)`` indices go to test, ``round(val_fraction * n)`` to val, the rest
    to train. With ``stratify`` (one label per example) every class is spread evenly: each
    class's examples get jittered evenly spaced keys in a random order and the splits take
    consecutive runs of the sorted keys, so a class of ``m`` examples puts about
    ``m * fraction`` (within one) into each split.

    Examples
    --------
    >>> [len(i) for i in split_indices(10, val_fraction=0.1, test_fraction=0.2, seed=0)]
    [7, 1, 2]
    """
    rng = np.random.default_rng(seed)
    n_test = round(test_fraction * n)
    n_val = round(val_fraction * n)
    if n - n_test - n_val < 1:
        raise DataError(f"{n} examples leave none for training with val_fraction "
                        f"{val_fraction} and test_fraction {test_fraction}")
    for split, count, fraction in (("validation", n_val, val_fraction),
                                   ("test", n_test, test_fraction)):
        if count == 0 and fraction > 0:    # an empty split would report loss 0, accuracy 0
            raise DataError(f"{n} examples give an empty {split} split ({fraction} of {n} "
                            f"rounds to 0); use a dataset of at least "
                            f"{math.floor(0.5 / fraction) + 1} examples, or a larger fraction")
    if stratify is None:
        order = rng.permutation(n)
    else:
        labels = np.asarray(stratify)
        if labels.shape != (n,):
            raise ValueError(f"stratify needs {n} labels, got shape {labels.shape}")
        _, inverse = np.unique(labels, return_inverse=True)
        inverse = inverse.reshape(-1)
        keys = np.empty(n)
        for c in range(int(inverse.max()) + 1 if n else 0):
            members = rng.permutation(np.flatnonzero(inverse == c))
            keys[members] = (np.arange(len(members)) + rng.random(len(members))) / len(members)
        order = np.argsort(keys, kind="stable")
    return (np.sort(order[n_test + n_val:]), np.sort(order[n_test:n_test + n_val]),
            np.sort(order[:n_test]))


def make_dataset(name: str, x: np.ndarray, y: np.ndarray, request: DataRequest, *,
                 task: Literal["classification", "regression"], n_classes: int | None = None,
                 description: str = "", class_names: Sequence[str] | None = None,
                 standardize_x: bool = False, standardize_y: bool = False,
                 minmax_x: bool = False) -> Dataset:
    """Split arrays ``x`` ``(n, *feature_shape)`` and ``y`` by ``request`` into a Dataset.

    Classification splits are stratified. ``standardize_*`` / ``minmax_x`` rescale with statistics
    of the train split only (constant columns are left unscaled). A helper for data sources.
    """
    import torch

    x = np.asarray(x)
    y = np.asarray(y)
    classification = task == "classification"
    train, val, test = split_indices(len(x), val_fraction=request.val_fraction,
                                     test_fraction=request.test_fraction, seed=request.seed,
                                     stratify=y if classification else None)
    x = x.astype(np.float64 if standardize_x or minmax_x else np.float32, copy=False)
    if standardize_x:
        x = _standardize(x, train)
    if minmax_x:
        low, high = x[train].min(axis=0), x[train].max(axis=0)
        width = np.where(high > low, high - low, 1.0)
        x = (x - low) / width
    if standardize_y:
        y = _standardize(y.astype(np.float64), train)
    x = x.astype(np.float32)
    y = y.astype(np.int64 if classification else np.float32)
    for what, values in (("features", x), ("targets", None if classification else y)):
        if values is not None and not np.isfinite(values).all():
            raise DataError(f"dataset '{name}': some {what} are beyond float32's range "
                            f"(±{FLOAT32_MAX:.3g}) and would be inf; rescale them before "
                            "loading")
    parts: dict[str, Any] = {}
    for split, index in zip(SPLITS, (train, val, test)):
        parts[f"x_{split}"] = torch.from_numpy(np.ascontiguousarray(x[index]))
        parts[f"y_{split}"] = torch.from_numpy(np.ascontiguousarray(y[index]))
    return Dataset(name=name, task=task, n_classes=n_classes, feature_shape=x.shape[1:],
                   description=description,
                   class_names=tuple(class_names) if class_names is not None else None,
                   target_shape=() if classification else y.shape[1:], **parts)


def _standardize(a: np.ndarray, train: np.ndarray) -> np.ndarray:
    mean = a[train].mean(axis=0)
    std = a[train].std(axis=0)
    return (a - mean) / np.where(std > 0, std, 1.0)


# ---------------------------------------------------------------------------------------------
# digits and synthetic regression (scikit-learn)


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _sklearn_datasets(name: str) -> Any:
    try:
        import sklearn.datasets
    except ImportError as exc:
        raise DataError(f"dataset '{name}' needs scikit-learn (pip install scikit-learn)"
                        ) from exc
    return sklearn.datasets


def _load_digits(request: DataRequest) -> Dataset:
    bunch = _sklearn_datasets("digits").load_digits()
    x = np.asarray(bunch.images, dtype=np.float64) / 16.0
    return make_dataset("digits", x, np.asarray(bunch.target), request, task="classification",
                        n_classes=10, class_names=[str(k) for k in range(10)],
                        description="scikit-learn 8x8 digits, pixels / 16, stratified split "
                                    f"(seed {request.seed})")


def _int_option(request: DataRequest, key: str, default: int, minimum: int) -> int:
    value = request.options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"dataset '{request.name}': option {key} must be an integer >= "
                        f"{minimum}, got {value!r}")
    return value


def _load_synthetic_regression(request: DataRequest) -> Dataset:
    n_samples = _int_option(request, "n_samples", 256, 3)
    n_features = _int_option(request, "n_features", 4096, 1)
    n_informative = _int_option(request, "n_informative", min(128, n_features), 0)
    n_targets = _int_option(request, "n_targets", 16, 1)
    noise = request.options.get("noise", 0.0)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < math.inf:
        raise DataError(f"dataset '{request.name}': option noise must be a finite number >= 0, "
                        f"got {noise!r}")
    if n_informative > n_features:
        raise DataError(f"dataset '{request.name}': n_informative ({n_informative}) exceeds "
                        f"n_features ({n_features})")
    # make_regression's float64 arrays, the standardised copy and the float32 splits
    needed = 4 * 8 * n_samples * (n_features + n_targets)
    available = physical_memory()
    if available is not None and needed > available // 2:
        raise DataError(f"dataset '{request.name}': {n_samples:,} samples of {n_features:,} "
                        f"features and {n_targets:,} targets need about {needed / 2**30:,.1f} "
                        f"GiB to generate, more than half of this machine's "
                        f"{available / 2**30:,.1f} GiB; lower n_samples or n_features")
    x, y = _sklearn_datasets(request.name).make_regression(
        n_samples=n_samples, n_features=n_features, n_informative=n_informative,
        n_targets=n_targets, noise=float(noise), random_state=request.seed)
    return make_dataset(
        "synthetic-regression", x, y, request, task="regression", standardize_x=True,
        standardize_y=True,
        description=f"make_regression(n_samples={n_samples}, n_features={n_features}, "
                    f"n_informative={n_informative}, n_targets={n_targets}, noise={noise}, "
                    f"random_state={request.seed}), standardised with train statistics")


# ---------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_HELP = "a folder with the four standard IDX files " + ", ".join(
    f"{f}[.gz]" for f in IDX_FILES)
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path, *, magic: int | None = None) -> np.ndarray:
    """Read one IDX file (gzipped if its name ends in ``.gz``) into a NumPy array.

    The header is big-endian: two zero bytes, a type code (``0x08`` = unsigned bytes), the
    number of dimensions, then each dimension as a 32-bit integer. ``magic`` (e.g.
    :data:`IDX_IMAGES_MAGIC`) is the first four bytes the file must start with. A file whose data
    is shorter or longer than its header promises is refused.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    found = int.from_bytes(raw[:4], "big")
    dtype = _IDX_DTYPES.get(raw[2]) if raw[:2] == b"\0\0" else None
    if (magic is not None and found != magic) or dtype is None:
        expected = f"0x{magic:08x}" if magic is not None else "0x0000TTNN (type, rank)"
        raise DataError(f"bad IDX magic 0x{found:08x} in {path}; expected {expected}")
    rank = raw[3]
    header = 4 + 4 * rank
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, expected {header})")
    dims = struct.unpack(f">{rank}I", raw[4:header])
    expected_bytes = math.prod(dims) * dtype.itemsize
    found_bytes = len(raw) - header
    if found_bytes != expected_bytes:
        what = "truncated" if found_bytes < expected_bytes else "has trailing data"
        raise DataError(f"{path}: {what}: the header promises {' x '.join(map(str, dims))} "
                        f"values ({expected_bytes} bytes), found {found_bytes} bytes")
    array = np.frombuffer(raw, dtype=dtype, count=math.prod(dims), offset=header)
    return array.reshape(dims).astype(dtype.newbyteorder("="))


def _idx_path(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_loader(name: str) -> Callable[[DataRequest], Dataset]:
    def load(request: DataRequest) -> Dataset:
        return _load_idx_folder(name, request)

    load.__name__ = f"load_{name.replace('-', '_')}"
    return load


def _load_idx_folder(name: str, request: DataRequest) -> Dataset:
    folder = request.path
    assert folder is not None
    if not folder.exists():
        raise DataError(f"{name}: {folder}: no such folder; expected {_IDX_HELP}")
    if not folder.is_dir():
        raise DataError(f"{name}: {folder}: not a folder; expected {_IDX_HELP}")
    paths = {stem: _idx_path(folder, stem) for stem in IDX_FILES}
    missing = [f"{stem}[.gz]" for stem, p in paths.items() if p is None]
    if missing:
        raise DataError(f"{name}: {folder}: missing {', '.join(missing)}; expected the four "
                        f"standard IDX files ({', '.join(f'{f}[.gz]' for f in IDX_FILES)}); "
                        "tngraph never downloads data")
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for part in ("train", "t10k"):
        image_path = paths[f"{part}-images-idx3-ubyte"]
        label_path = paths[f"{part}-labels-idx1-ubyte"]
        assert image_path is not None and label_path is not None
        images = read_idx(image_path, magic=IDX_IMAGES_MAGIC)
        labels = read_idx(label_path, magic=IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise DataError(f"{name}: {image_path.name} holds {len(images)} images but "
                            f"{label_path.name} holds {len(labels)} labels (in {folder})")
        if labels.size and int(labels.max()) > 9:
            raise DataError(f"{name}: {label_path}: label {int(labels.max())} is out of range; "
                            "expected class ids 0..9")
        parts[part] = images, labels
    (x_all, y_all), (x_test, y_test) = parts["train"], parts["t10k"]
    if x_all.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{name}: {folder}: training images are {x_all.shape[1:]} but test "
                        f"images are {x_test.shape[1:]}; expected the same size")
    return _image_dataset(name, request, (x_all, y_all), (x_test, y_test),
                          tuple(str(k) for k in range(10)),
                          f"IDX files in {folder}, pixels / 255, validation = stratified "
                          f"{request.val_fraction:g} of the training files (seed "
                          f"{request.seed}), test = t10k")


def _image_dataset(name: str, request: DataRequest, training: tuple[np.ndarray, np.ndarray],
                   test: tuple[np.ndarray, np.ndarray], class_names: tuple[str, ...],
                   description: str) -> Dataset:
    """A classification dataset of 8-bit images with an official test set: pixels / 255, the
    training images split into training and a stratified validation part (the request's
    fraction and seed)."""
    import torch

    x_all, y_all = training
    train, val, _ = split_indices(len(x_all), val_fraction=request.val_fraction,
                                  test_fraction=0.0, seed=request.seed, stratify=y_all)

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(np.divide(x, 255, dtype=np.float32)),
                torch.from_numpy(y.astype(np.int64)))

    x_train, y_train = tensors(x_all[train], y_all[train])
    x_val, y_val = tensors(x_all[val], y_all[val])
    x_test, y_test = tensors(*test)
    return Dataset(name=name, task="classification", x_train=x_train, y_train=y_train,
                   x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
                   n_classes=len(class_names), feature_shape=tuple(x_all.shape[1:]),
                   class_names=class_names, description=description)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (the official binary version; the python version through a restricted unpickler)

CIFAR10_TRAIN = tuple(f"data_batch_{k}" for k in range(1, 6))
CIFAR10_TEST = "test_batch"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
#: one record of the binary version: a label byte, then 3 x 32 x 32 pixel bytes (red, green,
#: blue planes, each row-major)
CIFAR10_RECORD = 1 + 3 * 32 * 32
_CIFAR_HELP = ("the folder cifar-10-batches-bin of the official binary version (data_batch_1.bin "
               "... data_batch_5.bin, test_batch.bin), or cifar-10-batches-py of the python "
               "version")
_CIFAR_FIX = ("download the CIFAR-10 binary version again from "
              "https://www.cs.toronto.edu/~kriz/cifar.html and unpack it (tngraph never "
              "downloads data)")


def read_cifar10_bin(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch: ``(images uint8 (n, 3, 32, 32), labels uint8 (n,))``.

    The file is ``n`` records of 3073 bytes: the label (0..9), then the red, green and blue
    32 x 32 planes. A file that is not a whole number of records, or holds a label above 9, is
    refused with the file's name.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; {_CIFAR_FIX}") from None
    if not raw or len(raw) % CIFAR10_RECORD:
        whole, extra = divmod(len(raw), CIFAR10_RECORD)
        what = "is empty" if not raw else (f"is truncated or damaged: {len(raw):,} bytes are "
                                           f"{whole:,} records of {CIFAR10_RECORD} bytes and "
                                           f"{extra:,} bytes more")
        raise DataError(f"cifar10: {path} {what}; each record is 1 label byte + 3072 pixel "
                        f"bytes; {_CIFAR_FIX}")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].copy()
    if int(labels.max()) > 9:
        row = int(np.argmax(labels > 9))
        raise DataError(f"cifar10: {path}: record {row} has label {int(labels[row])}; expected "
                        f"class ids 0..9 (is it CIFAR-100?); {_CIFAR_FIX}")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def _numpy_reconstructors() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR-10 python batch may name: numpy's array reconstructors."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:                     # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    found: dict[tuple[str, str], Any] = {}
    for module in ("numpy.core", "numpy._core"):
        found[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        if hasattr(numeric, "_frombuffer"):
            found[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer
    found[("numpy", "ndarray")] = np.ndarray
    found[("numpy", "dtype")] = np.dtype
    return found


def restricted_unpickle(data: bytes, where: str) -> Any:
    """Unpickle ``data`` allowing only plain containers, bytes, str, numbers and numpy arrays.

    Any other global a pickle names (``os.system``, a class with ``__reduce__``, ...) is refused
    with a DataError before it is looked up, so nothing in the file runs.
    """
    import io
    import pickle

    allowed = _numpy_reconstructors()

    class _Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in allowed:
                return allowed[(module, name)]
            raise DataError(f"cifar10: {where} names {module}.{name}; only plain containers, "
                            "bytes, numbers and numpy arrays are read from a pickle, so this "
                            f"file is refused unread: it is not a CIFAR-10 batch. Prefer the "
                            f"binary version; {_CIFAR_FIX}")

    try:
        return _Restricted(io.BytesIO(data), encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any damage to the file is a user error
        raise DataError(f"cifar10: cannot read {where}: {type(exc).__name__}: {exc}; "
                        f"{_CIFAR_FIX}") from None


def read_cifar10_pickle(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch of the CIFAR-10 python version through :func:`restricted_unpickle`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; {_CIFAR_FIX}") from None
    batch = restricted_unpickle(raw, str(path))
    get = (lambda key: batch.get(key.encode(), batch.get(key))) if isinstance(batch, dict) \
        else None
    data = get("data") if get else None
    labels = get("labels") if get else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072 or not isinstance(labels, (list, np.ndarray)) \
            or len(labels) != len(data):
        raise DataError(f"cifar10: {path} is not a CIFAR-10 python batch (a dict with 'data', "
                        f"uint8 (n, 3072), and n 'labels'); {_CIFAR_FIX}")
    label_array = np.asarray(labels)
    if label_array.size and (not np.issubdtype(label_array.dtype, np.integer)
                             or int(label_array.min()) < 0 or int(label_array.max()) > 9):
        raise DataError(f"cifar10: {path}: labels must be class ids 0..9; {_CIFAR_FIX}")
    return data.reshape(-1, 3, 32, 32), label_array.astype(np.uint8)


def _cifar_files(folder: Path) -> tuple[list[Path], Callable[[Path], tuple[np.ndarray,
                                                                            np.ndarray]]]:
    """The six batch files of the binary (preferred) or python version in ``folder`` or its
    ``cifar-10-batches-bin`` / ``-py`` subfolder, and their reader."""
    names = [*CIFAR10_TRAIN, CIFAR10_TEST]
    for where, suffix, reader in ((folder, ".bin", read_cifar10_bin),
                                  (folder / "cifar-10-batches-bin", ".bin", read_cifar10_bin),
                                  (folder, "", read_cifar10_pickle),
                                  (folder / "cifar-10-batches-py", "", read_cifar10_pickle)):
        paths = [where / f"{name}{suffix}" for name in names]
        present = [p for p in paths if p.is_file()]
        if len(present) == len(paths):
            return paths, reader
        if present:
            missing = ", ".join(p.name for p in paths if not p.is_file())
            raise DataError(f"cifar10: {where}: missing {missing}; expected {_CIFAR_HELP}; "
                            f"{_CIFAR_FIX}")
    raise DataError(f"cifar10: {folder}: no CIFAR-10 batches; expected {_CIFAR_HELP}; "
                    f"{_CIFAR_FIX}")


def _load_cifar10(request: DataRequest) -> Dataset:
    folder = request.path
    assert folder is not None
    if not folder.is_dir():
        raise DataError(f"cifar10: {folder}: no such folder; expected {_CIFAR_HELP}")
    paths, reader = _cifar_files(folder)
    parts = [reader(p) for p in paths]
    x_all = np.concatenate([images for images, _ in parts[:-1]])
    y_all = np.concatenate([labels for _, labels in parts[:-1]])
    x_test, y_test = parts[-1]
    return _image_dataset("cifar10", request, (x_all, y_all), (x_test, y_test), CIFAR10_CLASSES,
                          f"CIFAR-10 batches in {paths[0].parent}, pixels / 255 as (3, 32, 32), "
                          f"validation = stratified {request.val_fraction:g} of the training "
                          f"batches (seed {request.seed}), test = test_batch")


# ---------------------------------------------------------------------------------------------
# CSV


def _choice_option(request: DataRequest, key: str, default: str, valid: Sequence[str]) -> str:
    value = request.options.get(key, default)
    if value not in valid:
        raise DataError(f"{request.name}: option {key}={value!r} is not valid; "
                        f"{did_you_mean(str(value), valid)}")
    return value


def _load_csv(request: DataRequest) -> Dataset:
    path = request.path
    assert path is not None
    label = str(request.options.get("label", "label"))
    task = _choice_option(request, "task", "auto", ("auto", *TASKS))
    scale = _choice_option(request, "scale", "none", ("none", "minmax", "standard"))
    delimiter = request.options.get("delimiter", ",")
    delimiter = "\t" if delimiter == "tab" else str(delimiter)
    if len(delimiter) != 1:
        raise DataError(f"csv: option delimiter must be one character or 'tab', "
                        f"got {delimiter!r}")
    if not path.exists():
        raise DataError(f"csv: {path}: no such file; expected a CSV file with a header row")
    if not path.is_file():
        raise DataError(f"csv: {path}: not a file; expected a CSV file with a header row")

    header: list[str] | None = None
    features: list[list[float]] = []
    labels: list[tuple[int, str]] = []          # (line number, cell text)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                line = reader.line_num
                if header is None:
                    header = [cell.strip() for cell in row]
                    _check_header(path, header, label)
                    label_col = header.index(label)
                    feature_cols = [k for k in range(len(header)) if k != label_col]
                    continue
                if len(row) != len(header):
                    raise DataError(f"csv: {path}:{line}: {len(row)} cells, expected "
                                    f"{len(header)} (as in the header row)")
                values = []
                for k in feature_cols:
                    cell = row[k].strip()
                    try:
                        value = float(cell)
                    except ValueError:
                        value = math.nan
                    if not math.isfinite(value):
                        raise DataError(f"csv: {path}:{line}: column '{header[k]}': {cell!r} "
                                        "is not a finite number; feature columns must be "
                                        "numeric")
                    if abs(value) > FLOAT32_MAX and scale == "none":
                        raise DataError(f"csv: {path}:{line}: column '{header[k]}': {cell!r} "
                                        f"is beyond float32's range (±{FLOAT32_MAX:.3g}), "
                                        "so it would be read as inf; rescale the column, or "
                                        "load with csv:PATH?scale=standard")
                    values.append(value)
                features.append(values)
                cell = row[label_col].strip()
                if not cell:
                    raise DataError(f"csv: {path}:{line}: the label column '{label}' is empty")
                labels.append((line, cell))
    except UnicodeDecodeError as exc:
        raise DataError(f"csv: {path}: not UTF-8 text ({exc})") from exc
    except csv.Error as exc:
        raise DataError(f"csv: {path}: {exc}") from exc
    except OSError as exc:
        raise DataError(f"csv: {path}: cannot be read ({exc.strerror or exc}); expected a "
                        "regular CSV file with a header row") from exc
    if header is None:
        raise DataError(f"csv: {path}: the file is empty; expected a header row naming the "
                        f"columns (one of them '{label}') and data rows")
    if not features:
        raise DataError(f"csv: {path}: a header row but no data rows")

    x = np.asarray(features, dtype=np.float64)
    ints = _parse_all(labels, int)
    floats = ints if ints is not None else _parse_all(labels, float)
    if task == "auto":
        task = "regression" if ints is None and floats is not None else "classification"
    common = {"request": request, "standardize_x": scale == "standard",
              "minmax_x": scale == "minmax"}
    description = f"CSV {path}, label column '{label}'"
    if task == "regression":
        if floats is None:
            line, cell = next((ln, c) for ln, c in labels if _parse_all([(ln, c)], float) is None)
            raise DataError(f"csv: {path}:{line}: label {cell!r} is not a number; a regression "
                            "label column must be numeric")
        return make_dataset("csv", x, np.asarray(floats, dtype=np.float64), task="regression",
                            description=description, **common)
    values: list[Any] = floats if floats is not None else [c for _, c in labels]
    classes = sorted(set(values))
    ids = {v: k for k, v in enumerate(classes)}
    y = np.asarray([ids[v] for v in values], dtype=np.int64)
    names = [_class_name(c) for c in classes]
    return make_dataset("csv", x, y, task="classification", n_classes=len(classes),
                        class_names=names, description=description, **common)


def _class_name(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _check_header(path: Path, header: list[str], label: str) -> None:
    seen: set[str] = set()
    for name in header:
        if not name:
            raise DataError(f"csv: {path}: the header row has an empty column name")
        if name in seen:
            raise DataError(f"csv: {path}: column '{name}' appears twice in the header row")
        seen.add(name)
    if label not in header:
        numeric = all(_parse_all([(0, h)], float) is not None for h in header)
        note = " (the first row looks like data: a header row is required)" if numeric else ""
        raise DataError(f"csv: {path}: label column '{label}' not found{note}; "
                        f"{did_you_mean(label, header).replace('valid:', 'columns:')}; "
                        "choose it with csv:PATH?label=NAME")
    if len(header) < 2:
        raise DataError(f"csv: {path}: no feature columns besides the label '{label}'")


def _parse_all(cells: Sequence[tuple[int, str]], kind: type) -> list[Any] | None:
    out = []
    for _, cell in cells:
        try:
            value = kind(cell)
        except ValueError:
            return None
        if kind is float and not math.isfinite(value):
            return None
        out.append(value)
    return out


# the built-in datasets (entry points of group tngraph.datasets name these objects)
DIGITS = DataSource("digits", _load_digits,
                    description="scikit-learn's bundled 8x8 digits (1797 images, 10 classes)")
MNIST = DataSource("mnist", _idx_loader("mnist"), path="required",
                   description="MNIST from the four IDX files in a folder", path_help=_IDX_HELP)
FASHION_MNIST = DataSource("fashion_mnist", _idx_loader("fashion-mnist"), path="required",
                           path_help=_IDX_HELP,
                           description="Fashion-MNIST from the four IDX files in a folder")
CSV = DataSource("csv", _load_csv, path="required", options=("label", "task", "delimiter", "scale"),
                 path_help="a CSV file with a header row",
                 description="a CSV file: numeric features and a named label column")
CIFAR10 = DataSource("cifar10", _load_cifar10, path="required", path_help=_CIFAR_HELP,
                     description="CIFAR-10 from the official binary (or python) batches in a "
                                 "folder")
SYNTHETIC_REGRESSION = DataSource(
    "synthetic_regression", _load_synthetic_regression,
    options=("n_samples", "n_features", "n_informative", "n_targets", "noise"),
    description="seeded sklearn make_regression, standardised (TT regression experiment)")
