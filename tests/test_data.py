"""Datasets: digits, IDX folders (MNIST layout), CSV files, synthetic regression, the registry.

IDX and CSV files are written into ``tmp_path`` by the tests; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tngraph.data import (
    DATASETS,
    IDX_FILES,
    DataError,
    DataRequest,
    Dataset,
    DataSource,
    DataSpec,
    get_dataset,
    list_datasets,
    load_dataset,
    make_dataset,
    parse_dataset_spec,
    read_idx,
    register_dataset,
    split_indices,
)
from tngraph.errors import PluginError, TNGraphError

DIGITS_SIZES = {"train": 1258, "val": 180, "test": 359}


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


# -- digits ------------------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_digits_split_shapes_and_ranges(digits: Dataset, split: str) -> None:
    x, y = digits.split(split)
    n = DIGITS_SIZES[split]
    assert tuple(x.shape) == (n, 8, 8) and x.dtype == torch.float32
    assert tuple(y.shape) == (n,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0    # digits pixels are 0..16
    assert set(y.tolist()) == set(range(10))


def test_digits_metadata(digits: Dataset) -> None:
    assert digits.name == "digits" and digits.task == "classification"
    assert digits.n_classes == 10 and digits.feature_shape == (8, 8) and digits.n_features == 64
    assert digits.sizes == DIGITS_SIZES
    assert digits.class_names == tuple("0123456789")
    assert digits.summary().splitlines()[:2] == [
        "digits: classification, 10 classes, features 8x8", "  train 1258  val 180  test 359"]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_digits_split_is_stratified(digits: Dataset, split: str) -> None:
    all_y = torch.cat([digits.y_train, digits.y_val, digits.y_test])
    total = torch.bincount(all_y, minlength=10).double()
    counts = torch.bincount(digits.split(split)[1], minlength=10).double()
    expected = total * DIGITS_SIZES[split] / len(all_y)
    assert float((counts - expected).abs().max()) <= 1.5


def test_digits_splits_partition_the_data(digits: Dataset) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    reference = sorted(map(tuple, np.concatenate(
        [bunch.images.reshape(-1, 64) / 16, bunch.target[:, None]], axis=1).tolist()))
    ours = sorted(map(tuple, torch.cat([
        torch.cat([x.reshape(len(x), -1).double(), y[:, None].double()], dim=1)
        for x, y in (digits.split(s) for s in ("train", "val", "test"))]).tolist()))
    np.testing.assert_allclose(np.array(ours), np.array(reference), atol=1e-7)


def test_digits_same_seed_same_split_other_seed_other_split(digits: Dataset) -> None:
    again = load_dataset("digits", seed=0)
    assert torch.equal(again.x_test, digits.x_test) and torch.equal(again.y_val, digits.y_val)
    other = load_dataset("digits", seed=1)
    assert other.sizes == digits.sizes
    assert not torch.equal(other.x_test, digits.x_test)


@pytest.mark.parametrize(("val", "test", "sizes"), [
    (0.1, 0.2, (1258, 180, 359)),
    (0.0, 0.25, (1348, 0, 449)),
    (0.5, 0.0, (899, 898, 0)),              # round(898.5) == 898
])
def test_digits_fractions(val: float, test: float, sizes: tuple[int, int, int]) -> None:
    ds = load_dataset("digits", val_fraction=val, test_fraction=test)
    assert tuple(ds.sizes.values()) == sizes


# -- splitting ---------------------------------------------------------------------------------

@pytest.mark.parametrize("stratify", [None, np.arange(101) % 3, np.array(["b"] * 90 + ["a"] * 11)])
@pytest.mark.parametrize("seed", [0, 7])
def test_split_indices_partition(stratify: np.ndarray | None, seed: int) -> None:
    train, val, test = split_indices(101, val_fraction=0.1, test_fraction=0.3, seed=seed,
                                     stratify=stratify)
    assert (len(train), len(val), len(test)) == (61, 10, 30)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(101))
    assert all(np.all(np.diff(part) > 0) for part in (train, val, test))   # sorted
    again = split_indices(101, val_fraction=0.1, test_fraction=0.3, seed=seed, stratify=stratify)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))


def test_split_indices_stratifies_a_rare_class() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    train, val, test = split_indices(100, val_fraction=0.1, test_fraction=0.3, seed=3,
                                     stratify=labels)
    assert [int(labels[s].sum()) for s in (train, val, test)] == [6, 1, 3]


def test_split_indices_needs_a_training_example() -> None:
    with pytest.raises(DataError, match="3 examples leave none for training"):
        split_indices(3, val_fraction=0.4, test_fraction=0.5, seed=0)


# -- spec strings ------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "expected"), [
    ("digits", DataSpec("digits")),
    ("mnist:~/data/mnist", DataSpec("mnist", "~/data/mnist")),
    ("csv:C:\\data\\x.csv?label=y", DataSpec("csv", "C:\\data\\x.csv", {"label": "y"})),
    ("synthetic-regression?n_samples=12&noise=0.5&flag=TRUE&name=a b",
     DataSpec("synthetic-regression", None,
              {"n_samples": 12, "noise": 0.5, "flag": True, "name": "a b"})),
    (" csv:a.csv?label= ", DataSpec("csv", "a.csv", {"label": ""})),
])
def test_parse_dataset_spec(spec: str, expected: DataSpec) -> None:
    assert parse_dataset_spec(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("", "empty dataset spec"),
    (":x", "names no dataset"),
    ("csv:", "empty path after ':'"),
    ("digits?seed", "option 'seed' is not KEY=VALUE"),
    ("csv:x?label=a&label=b", "option 'label' given twice"),
])
def test_bad_dataset_specs(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_dataset_spec(spec)


@pytest.mark.parametrize(("spec", "kwargs", "message"), [
    ("digitz", {}, r"unknown dataset 'digitz'; did you mean 'digits'\? valid: cifar10, csv, "
                   r"digits, fashion_mnist, mnist, synthetic_regression"),
    ("fashion-mnst", {}, r"unknown dataset 'fashion-mnst'; did you mean 'fashion_mnist'\?"),
    ("mnist", {}, r"dataset 'mnist' needs a path: mnist:PATH \(a folder with the four standard "
                  r"IDX files train-images-idx3-ubyte\[\.gz\].*never downloads"),
    ("digits:/tmp", {}, "dataset 'digits' takes no path, got '/tmp'"),
    ("digits?scale=minmax", {},
     "dataset 'digits' has no option 'scale'; valid: test_fraction, val_fraction"),
    ("csv:x.csv?lable=y", {}, r"has no option 'lable'; did you mean 'label'\?"),
    ("synthetic-regression", {"n_sample": 3}, r"did you mean 'n_samples'\?"),
    ("synthetic-regression?n_samples=ten", {}, "n_samples must be an integer >= 3, got 'ten'"),
    ("synthetic-regression?n_features=4&n_informative=5", {}, r"n_informative \(5\) exceeds"),
    ("digits", {"val_fraction": 1.5}, r"val_fraction must be 0 or a number from 1e-9 to below 1"),
    ("digits", {"test_fraction": 5e-324}, r"test_fraction must be 0 or a number from 1e-9"),
    ("digits", {"seed": -1}, r"the data seed must be an integer from 0 to 2\*\*32 - 1, got -1"),
    ("digits", {"seed": 2**32}, r"the data seed must be an integer from 0 to 2\*\*32 - 1"),
    ("synthetic-regression", {"noise": float("nan")}, "noise must be a finite number >= 0"),
    ("synthetic-regression", {"noise": float("inf")}, "noise must be a finite number >= 0"),
    ("digits", {"val_fraction": 0.5, "test_fraction": 0.5}, "must be below 1"),
    ("digits", {"seed": "0"}, "seed must be an integer"),
])
def test_load_dataset_errors(spec: str, kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(spec, **kwargs)


def test_data_error_is_a_user_error() -> None:
    assert issubclass(DataError, TNGraphError)


def test_hyphen_and_underscore_name_the_same_dataset() -> None:
    assert get_dataset("synthetic-regression") is get_dataset("synthetic_regression")
    assert get_dataset("fashion-mnist").name == "fashion_mnist"


# -- IDX folders -------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file of unsigned bytes (``magic`` overrides the first four bytes)."""
    magic = magic if magic is not None else 0x0800 + array.ndim
    return (struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(np.uint8).tobytes())


def write_idx(path: Path, data: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def fake_images(n: int, offset: int) -> np.ndarray:
    """``n`` distinct 5x4 images: pixel (0, 0) is the image number, (4, 3) is 255."""
    images = np.random.default_rng(offset).integers(0, 256, size=(n, 5, 4))
    images[:, 0, 0] = np.arange(offset, offset + n)
    images[:, 4, 3] = 255
    return images


@pytest.fixture
def idx_folder(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A folder of four small IDX files (30 train, 12 test); ``gz`` picks the gzipped ones."""
    gz = getattr(request, "param", "none")
    arrays = {
        "train-images-idx3-ubyte": fake_images(30, 0),
        "train-labels-idx1-ubyte": np.arange(30) % 10,
        "t10k-images-idx3-ubyte": fake_images(12, 100),
        "t10k-labels-idx1-ubyte": (np.arange(12) * 7) % 10,
    }
    for stem, array in arrays.items():
        zipped = gz == "all" or (gz == "images" and "images" in stem)
        write_idx(tmp_path / stem, idx_bytes(array), zipped)
    return tmp_path


@pytest.mark.parametrize("idx_folder", ["none", "all", "images"], indirect=True)
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_round_trip(idx_folder: Path, name: str) -> None:
    ds = load_dataset(f"{name}:{idx_folder}", seed=4)
    assert ds.name == name and ds.task == "classification" and ds.n_classes == 10
    assert ds.feature_shape == (5, 4) and ds.sizes == {"train": 27, "val": 3, "test": 12}
    np.testing.assert_array_equal(ds.x_test.numpy() * 255, fake_images(12, 100))
    assert ds.y_test.tolist() == ((np.arange(12) * 7) % 10).tolist()
    assert float(ds.x_train.max()) == 1.0 and float(ds.x_train.min()) >= 0.0
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    # train + val are the training files, each image once, with its own label
    x = torch.cat([ds.x_train, ds.x_val])
    y = torch.cat([ds.y_train, ds.y_val])
    numbers = (x[:, 0, 0] * 255).round().long()
    assert sorted(numbers.tolist()) == list(range(30))
    assert torch.equal(y, numbers % 10)
    assert len(set(ds.y_val.tolist())) == 3           # stratified: 3 different classes


def test_idx_validation_slice_depends_on_seed(idx_folder: Path) -> None:
    a, b = (load_dataset(f"mnist:{idx_folder}", seed=s) for s in (0, 1))
    again = load_dataset(f"mnist:{idx_folder}", seed=0)
    assert torch.equal(a.x_val, again.x_val)
    assert not torch.equal(a.x_val, b.x_val)


def test_idx_missing_files_are_all_named(idx_folder: Path) -> None:
    (idx_folder / "t10k-labels-idx1-ubyte").unlink()
    (idx_folder / "train-images-idx3-ubyte").unlink()
    with pytest.raises(DataError) as exc:
        load_dataset(f"mnist:{idx_folder}")
    assert str(exc.value).startswith(
        f"mnist: {idx_folder}: missing train-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]; "
        "expected the four standard IDX files")


def test_idx_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"fashion-mnist: {tmp_path / 'nope'}: no such folder; "
                                        "expected a folder with the four standard IDX files"):
        load_dataset(f"fashion-mnist:{tmp_path / 'nope'}")


def test_idx_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(f"mnist:{tmp_path / 'f'}")


@pytest.mark.parametrize(("stem", "data", "message"), [
    ("train-images-idx3-ubyte", idx_bytes(fake_images(30, 0), magic=0x00000801),
     r"bad IDX magic 0x00000801 in .*train-images-idx3-ubyte; expected 0x00000803"),
    ("t10k-labels-idx1-ubyte", b"PK\x03\x04" + bytes(20),
     r"bad IDX magic 0x504b0304 in .*t10k-labels-idx1-ubyte; expected 0x00000801"),
    ("train-images-idx3-ubyte", idx_bytes(fake_images(30, 0))[:-7],
     r"train-images-idx3-ubyte: truncated: the header promises 30 x 5 x 4 values \(600 bytes\), "
     r"found 593 bytes"),
    ("train-labels-idx1-ubyte", idx_bytes(np.arange(30) % 10) + b"\0",
     "has trailing data"),
    ("t10k-images-idx3-ubyte", struct.pack(">II", 0x803, 12),
     r"truncated IDX header \(8 bytes, expected 16\)"),
    ("t10k-labels-idx1-ubyte", b"\0\0",
     "2 bytes is too short for an IDX header"),
    ("train-labels-idx1-ubyte", idx_bytes(np.arange(29) % 10),
     "mnist: train-images-idx3-ubyte holds 30 images but train-labels-idx1-ubyte holds 29 labels"),
    ("t10k-labels-idx1-ubyte", idx_bytes(np.arange(12) + 1),
     r"label 12 is out of range; expected class ids 0..9"),
    ("t10k-images-idx3-ubyte", idx_bytes(np.zeros((12, 4, 5))),
     r"training images are \(5, 4\) but test images are \(4, 5\)"),
])
def test_idx_malformed_files(idx_folder: Path, stem: str, data: bytes, message: str) -> None:
    (idx_folder / stem).write_bytes(data)
    with pytest.raises(DataError, match=message):
        load_dataset(f"mnist:{idx_folder}")


def test_idx_corrupt_gzip(idx_folder: Path) -> None:
    (idx_folder / "train-labels-idx1-ubyte").unlink()
    good = gzip.compress(idx_bytes(np.arange(30) % 10))
    (idx_folder / "train-labels-idx1-ubyte.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cannot read .*train-labels-idx1-ubyte\.gz"):
        load_dataset(f"mnist:{idx_folder}")


def test_read_idx_other_types(tmp_path: Path) -> None:
    values = np.array([[1.5, -2.0], [0.25, 8.0]], dtype=">f4")
    path = tmp_path / "floats.idx"
    path.write_bytes(struct.pack(">I", 0x0D02) + struct.pack(">II", 2, 2) + values.tobytes())
    np.testing.assert_array_equal(read_idx(path), values.astype(np.float32))
    assert IDX_FILES[0] == "train-images-idx3-ubyte"


# -- CSV ---------------------------------------------------------------------------------------

def write_csv(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


CLASSES_CSV = "a,b,species\n" + "".join(
    f"{k},{k * 0.5},{['setosa', 'versicolor', 'virginica'][k % 3]}\n" for k in range(30))


def test_csv_string_labels_are_classes_in_sorted_order(tmp_path: Path) -> None:
    text = CLASSES_CSV.replace("setosa", "zeta")            # sorted: versicolor, virginica, zeta
    ds = load_dataset(f"csv:{write_csv(tmp_path, text)}?label=species", seed=1)
    assert ds.task == "classification" and ds.n_classes == 3
    assert ds.class_names == ("versicolor", "virginica", "zeta")
    assert ds.feature_shape == (2,) and ds.sizes == {"train": 21, "val": 3, "test": 6}
    x = torch.cat([ds.x_train, ds.x_val, ds.x_test])
    y = torch.cat([ds.y_train, ds.y_val, ds.y_test])
    k = x[:, 0].long()
    assert torch.equal(x[:, 1], k * 0.5)
    assert torch.equal(y, torch.tensor([2, 0, 1])[k % 3])   # zeta=2, versicolor=0, virginica=1
    assert sorted(ds.y_test.tolist()) == [0, 0, 1, 1, 2, 2]  # stratified


@pytest.mark.parametrize(("labels", "task", "n_classes", "names", "dtype"), [
    (["3", "10", "3", "-1"] * 5, "classification", 3, ("-1", "3", "10"), torch.int64),
    (["0.5", "1", "2.25", "3e1"] * 5, "regression", None, None, torch.float32),
])
def test_csv_label_kind_decides_the_task(tmp_path: Path, labels: list[str], task: str,
                                         n_classes: int | None, names: tuple | None,
                                         dtype: torch.dtype) -> None:
    text = "y,x1,x2\n" + "".join(f"{v},{k},{-k}\n" for k, v in enumerate(labels))
    ds = load_dataset(f"csv:{write_csv(tmp_path, text)}", label="y")
    assert (ds.task, ds.n_classes, ds.class_names) == (task, n_classes, names)
    assert ds.y_train.dtype == dtype and ds.target_shape == ()
    x = torch.cat([ds.x_train, ds.x_val, ds.x_test])
    y = torch.cat([ds.y_train, ds.y_val, ds.y_test])
    k = x[:, 0].long()
    expected = [float(v) for v in labels] if task == "regression" else \
        [sorted({int(v) for v in labels}).index(int(v)) for v in labels]
    assert torch.equal(y, torch.tensor(expected, dtype=dtype)[k])


@pytest.mark.parametrize(("task", "expected_task", "n_classes"), [
    ("regression", "regression", None),
    ("classification", "classification", 4),
])
def test_csv_task_can_be_forced(tmp_path: Path, task: str, expected_task: str,
                                n_classes: int | None) -> None:
    text = "x,label\n" + "".join(f"{k},{k % 4}\n" for k in range(20))
    path = write_csv(tmp_path, text)
    ds = load_dataset(f"csv:{path}?task={task}")
    assert ds.task == expected_task and ds.n_classes == n_classes


def test_csv_minmax_scaling_uses_train_statistics(tmp_path: Path) -> None:
    text = "x,label\n" + "".join(f"{10 * k},{k % 2}\n" for k in range(20))
    path = write_csv(tmp_path, text)
    raw = load_dataset(f"csv:{path}")
    assert sorted(torch.cat([raw.x_train, raw.x_val, raw.x_test])[:, 0].tolist()) == \
        [10.0 * k for k in range(20)]
    ds = load_dataset(f"csv:{path}?scale=minmax")
    assert (float(ds.x_train.min()), float(ds.x_train.max())) == (0.0, 1.0)
    lo, hi = float(raw.x_train.min()), float(raw.x_train.max())
    torch.testing.assert_close(ds.x_test, (raw.x_test - lo) / (hi - lo))


def test_csv_standard_scaling(tmp_path: Path) -> None:
    text = "x,c,label\n" + "".join(f"{10 * k},7,{k * 0.1}\n" for k in range(40))
    ds = load_dataset(f"csv:{write_csv(tmp_path, text)}?scale=standard")
    assert abs(float(ds.x_train[:, 0].mean())) < 1e-5
    assert abs(float(ds.x_train[:, 0].std(unbiased=False)) - 1) < 1e-5
    assert torch.all(ds.x_train[:, 1] == 0)                 # constant column: centred only


def test_csv_tab_delimiter_blank_lines_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("\ufeffa\tlabel\n\n" + "".join(f"{k}\t{k % 2}\n" for k in range(10)),
                    encoding="utf-8")
    ds = load_dataset(f"csv:{path}?delimiter=tab")
    assert ds.feature_shape == (1,) and sum(ds.sizes.values()) == 10


@pytest.mark.parametrize(("text", "spec_tail", "message"), [
    ("a,b,c\n1,2,3\n", "?label=y",
     r"csv: .*data\.csv: label column 'y' not found; columns: a, b, c; choose it with "
     r"csv:PATH\?label=NAME"),
    ("a,b,Label\n1,2,3\n", "", r"label column 'label' not found; did you mean 'Label'\?"),
    ("1,2,3\n4,5,6\n", "?label=y", r"not found \(the first row looks like data: a header row is "
                                   r"required\)"),
    ("a,label\n1,0\n2,1\nx2,0\n", "", r"data\.csv:4: column 'a': 'x2' is not a finite number"),
    ("a,label\n1,0\n\n\n2,1\n,0\n", "", r"data\.csv:6: column 'a': '' is not a finite number"),
    ("a,label\n1,0\nnan,1\n", "", r"data\.csv:3: column 'a': 'nan' is not a finite number"),
    ("a,b,label\n1,2,0\n1,2\n", "", r"data\.csv:3: 2 cells, expected 3 \(as in the header row\)"),
    ("a,label\n1,0\n2, \n", "", r"data\.csv:3: the label column 'label' is empty"),
    ("a,label\n1,0.5\n2,high\n", "?task=regression",
     r"data\.csv:3: label 'high' is not a number; a regression label column must be numeric"),
    ("", "", r"data\.csv: the file is empty; expected a header row"),
    ("a,label\n", "", r"data\.csv: a header row but no data rows"),
    ("label\n1\n", "", r"no feature columns besides the label 'label'"),
    ("a,a,label\n1,2,3\n", "", r"column 'a' appears twice in the header row"),
    ("a,,label\n1,2,3\n", "", r"the header row has an empty column name"),
    ("a,label\n1,0\n", "?task=both", r"option task='both' is not valid; valid: auto, "),
    ("a,label\n1,0\n", "?delimiter=;;", "delimiter must be one character or 'tab'"),
    ("a,label\n1,0\n-1e39,1\n", "", r"data\.csv:3: column 'a': '-1e39' is beyond float32's "
                                  r"range \(±3\.4e\+38\), so it would be read as inf"),
    ("a,label\n1,0.5\n2,1e39\n" + "3,1\n" * 8, "?task=regression",
     r"some targets are beyond float32's range .* and would be inf"),
])
def test_csv_errors(tmp_path: Path, text: str, spec_tail: str, message: str) -> None:
    path = write_csv(tmp_path, text)
    with pytest.raises(DataError, match=message):
        load_dataset(f"csv:{path}{spec_tail}")


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p / "missing.csv", r"csv: .*missing\.csv: no such file; expected a CSV file"),
    (lambda p: p, "not a file"),
])
def test_csv_missing_path(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(f"csv:{make(tmp_path)}")


def test_csv_within_float32_range_is_kept(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "a,label\n3e38,0\n1,1\n2,0\n3,1\n4,0\n5,1\n6,0\n7,1\n8,0\n")
    ds = load_dataset(f"csv:{path}", val_fraction=0, test_fraction=0)
    assert torch.isfinite(ds.x_train).all() and ds.x_train.max().item() == pytest.approx(3e38)


def test_csv_unreadable_file() -> None:
    with pytest.raises(DataError, match=r"csv: /proc/self/mem: cannot be read \(Input/output "
                                        r"error\); expected a regular CSV file"):
        load_dataset("csv:/proc/self/mem")


def test_csv_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("a,label\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        load_dataset(f"csv:{path}")


# -- synthetic regression ----------------------------------------------------------------------

SMALL = {"n_samples": 200, "n_features": 32, "n_informative": 8, "n_targets": 4}


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    return load_dataset("synthetic-regression", seed=5, **SMALL)


def test_synthetic_regression_defaults_match_the_tt_experiment() -> None:
    ds = load_dataset("synthetic-regression")
    assert ds.task == "regression" and ds.n_classes is None
    assert ds.feature_shape == (4096,) and ds.target_shape == (16,)
    assert sum(ds.sizes.values()) == 256 and ds.sizes == {"train": 179, "val": 26, "test": 51}
    assert "n_informative=128" in ds.description and "noise=0.0" in ds.description


@pytest.mark.parametrize("attr", ["x_train", "y_train"])
def test_synthetic_regression_is_standardised_on_train(synthetic: Dataset, attr: str) -> None:
    values = getattr(synthetic, attr).double()
    assert float(values.mean(0).abs().max()) < 1e-5
    assert float((values.std(0, unbiased=False) - 1).abs().max()) < 1e-5
    assert float(synthetic.x_test.double().mean(0).abs().max()) > 1e-3   # test stats differ


def test_synthetic_regression_is_seeded(synthetic: Dataset) -> None:
    again = load_dataset(f"synthetic-regression?n_samples={SMALL['n_samples']}&n_features=32"
                         "&n_informative=8&n_targets=4", seed=5)
    assert torch.equal(again.x_train, synthetic.x_train)
    assert torch.equal(again.y_test, synthetic.y_test)
    other = load_dataset("synthetic-regression", seed=6, **SMALL)
    assert not torch.equal(other.x_train, synthetic.x_train)


def test_synthetic_regression_is_linear_without_noise(synthetic: Dataset) -> None:
    x = torch.cat([synthetic.x_train, synthetic.x_val]).double()
    y = torch.cat([synthetic.y_train, synthetic.y_val]).double()
    ones = torch.ones(len(x), 1, dtype=torch.float64)
    coef = torch.linalg.lstsq(torch.cat([x, ones], 1), y).solution
    residual = torch.cat([synthetic.x_test.double(), torch.ones(len(synthetic.x_test), 1,
                                                                dtype=torch.float64)], 1) @ coef
    assert float((residual - synthetic.y_test.double()).abs().max()) < 1e-3


def test_synthetic_regression_single_target(tmp_path: Path) -> None:
    ds = load_dataset("synthetic_regression", n_samples=20, n_features=3, n_targets=1, noise=1)
    assert ds.target_shape == () and tuple(ds.y_train.shape) == (14,)



def test_synthetic_regression_too_large_is_refused_before_generating() -> None:
    with pytest.raises(DataError, match=r"100,000,000,000 samples of 4,096 features and 16 "
                                        r"targets need about [\d,.]+ GiB to generate, more than "
                                        r"half of this machine's .* lower n_samples"):
        load_dataset("synthetic-regression", n_samples=10**11)


# -- loaders -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("split", "batch_size", "batches"), [
    ("train", 64, [64, 64, 12]),
    ("val", 7, [7, 7, 6]),
    ("test", 100, [40]),
])
def test_loader_batches_cover_the_split_once(synthetic: Dataset, split: str, batch_size: int,
                                             batches: list[int]) -> None:
    x, y = synthetic.split(split)
    loader = synthetic.loader(split, batch_size=batch_size, seed=3)
    for _epoch in range(2):
        got = list(loader)
        assert [len(xb) for xb, _ in got] == batches
        assert all(tuple(xb.shape[1:]) == (32,) and tuple(yb.shape[1:]) == (4,)
                   for xb, yb in got)
        xs = torch.cat([xb for xb, _ in got])
        ys = torch.cat([yb for _, yb in got])
        order = [int(torch.nonzero((x == row).all(1))[0]) for row in xs]
        assert sorted(order) == list(range(len(x)))
        assert torch.equal(ys, y[order])


def test_loader_shuffles_train_only_and_is_seeded(synthetic: Dataset) -> None:
    def first(split: str, seed: int, epochs: int = 1) -> torch.Tensor:
        loader = synthetic.loader(split, batch_size=len(synthetic.split(split)[0]), seed=seed)
        return [xb for _ in range(epochs) for xb, _ in loader][-1]

    assert torch.equal(first("val", 0), synthetic.x_val)
    assert not torch.equal(first("train", 0), synthetic.x_train)
    assert torch.equal(first("train", 0), first("train", 0))
    assert not torch.equal(first("train", 0), first("train", 1))
    assert not torch.equal(first("train", 0, epochs=2), first("train", 0))   # new epoch order


def test_loader_drop_last_and_bad_arguments(digits: Dataset) -> None:
    assert [len(y) for _, y in digits.loader("val", 64, drop_last=True)] == [64, 64]
    with pytest.raises(DataError, match=r"unknown split 'valid'; did you mean 'val'\?"):
        digits.loader("valid")
    with pytest.raises(DataError, match="batch_size must be an integer >= 1"):
        digits.loader("train", 0)


# -- registry and plugins ----------------------------------------------------------------------

@pytest.fixture
def scratch_datasets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registrations made by a test are undone afterwards."""
    DATASETS.list()
    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))
    monkeypatch.setattr(DATASETS, "_info", dict(DATASETS._info))
    yield


def _load_xor(request: DataRequest) -> Dataset:
    repeat = int(request.options.get("repeat", 10))
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]] * repeat, dtype=np.float32)
    y = (x[:, 0] != x[:, 1]).astype(np.int64)
    return make_dataset("xor", x, y, request, task="classification", n_classes=2,
                        description=f"xor from {request.path}")


def test_builtin_datasets_are_listed() -> None:
    assert list_datasets() == ["cifar10", "csv", "digits", "fashion_mnist", "mnist",
                               "synthetic_regression"]


def test_registered_dataset_is_loadable(scratch_datasets: None) -> None:
    register_dataset(DataSource("xor", _load_xor, path="optional", options=("repeat",)))
    assert "xor" in list_datasets()
    ds = load_dataset("xor:somewhere?repeat=5", seed=2, test_fraction=0.4)
    assert ds.sizes == {"train": 10, "val": 2, "test": 8}
    assert ds.description == "xor from somewhere"
    assert sorted(ds.y_test.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(PluginError, match="dataset 'xor' is already registered"):
        register_dataset(DataSource("xor", _load_xor))
    register_dataset(DataSource("xor", _load_xor, description="v2"), replace=True)
    assert get_dataset("xor").description == "v2"


def test_scratch_registration_did_not_leak() -> None:
    assert "xor" not in list_datasets()


@pytest.mark.parametrize("name", ["digits", "my-data"])
def test_bad_registrations_are_refused(scratch_datasets: None, name: str) -> None:
    with pytest.raises(PluginError, match="already registered|not an identifier"):
        register_dataset(DataSource(name, _load_xor))


def test_a_plugin_must_return_a_dataset(scratch_datasets: None) -> None:
    register_dataset(DataSource("broken", lambda request: (1, 2)))
    with pytest.raises(DataError, match="dataset 'broken' returned tuple, expected"):
        load_dataset("broken")


def _tensors(n: int = 4, classes: bool = True) -> dict[str, torch.Tensor]:
    y = torch.zeros(n, dtype=torch.int64) if classes else torch.zeros(n)
    return {f"{v}_{s}": (torch.zeros(n, 3) if v == "x" else y)
            for s in ("train", "val", "test") for v in ("x", "y")}


@pytest.mark.parametrize(("change", "message"), [
    ({"task": "ranking"}, "task 'ranking' is not one of classification, regression"),
    ({"n_classes": None}, "needs n_classes >= 1"),
    ({"feature_shape": (4,)}, r"x_train is torch.float32 \(4, 3\); expected float32 \(n, 4\)"),
    ({"x_val": torch.zeros(4, 3, dtype=torch.float64)}, "x_val is torch.float64"),
    ({"y_test": torch.zeros(5, dtype=torch.int64)}, "x_test has 4 rows but y_test has 5"),
    ({"y_train": torch.zeros(4)}, r"y_train is torch.float32 \(4,\); expected torch.int64"),
    ({"y_val": torch.full((4,), 2)}, r"y_val holds labels outside 0..1"),
    ({"class_names": ("a",)}, "1 class names for 2 classes"),
    ({"x_train": np.zeros((4, 3), dtype=np.float32)}, "must hold torch tensors"),
])
def test_dataset_checks_its_contents(change: dict, message: str) -> None:
    fields = {"name": "d", "task": "classification", "n_classes": 2, "feature_shape": (3,),
              **_tensors()}
    Dataset(**fields)                                      # the unchanged fields are fine
    with pytest.raises(DataError, match=message):
        Dataset(**{**fields, **change})


@pytest.mark.parametrize(("n", "message"), [
    (4, "4 examples give an empty validation split (0.1 of 4 rounds to 0); use a dataset of at "
        "least 6 examples"),
    (5, "5 examples give an empty validation split"),        # round(0.5) is 0
])
def test_an_empty_split_is_refused(n: int, message: str) -> None:
    """An empty validation or test split would report loss 0.0000, accuracy 0.0000."""
    from tngraph.data import DataError, split_indices

    with pytest.raises(DataError, match=re.escape(message)):
        split_indices(n, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert [len(i) for i in split_indices(6, val_fraction=0.1, test_fraction=0.2, seed=0)] == \
        [4, 1, 1]


@pytest.mark.parametrize(("source", "sizes"), [
    ("digits?val_fraction=0.2&test_fraction=0.1", {"train": 1258, "val": 359, "test": 180}),
    ("synthetic-regression?n_samples=100&n_features=8&val_fraction=0",
     {"train": 80, "val": 0, "test": 20}),
    ("synthetic-regression?n_samples=100&n_features=8&test_fraction=0&val_fraction=0.3",
     {"train": 70, "val": 30, "test": 0}),
])
def test_split_fractions_are_options_of_every_dataset(source: str, sizes: dict) -> None:
    assert load_dataset(source).sizes == sizes


def test_a_keyword_fraction_wins_over_the_spec_string() -> None:
    assert load_dataset("digits?val_fraction=0.3", val_fraction=0.1).sizes["val"] == 180


def test_an_unknown_option_lists_the_split_options() -> None:
    with pytest.raises(DataError, match="has no option 'val_frac'; did you mean "
                                        "'val_fraction'"):
        load_dataset("synthetic-regression?val_frac=0")


# -- CIFAR-10 ---------------------------------------------------------------------------------
# small batch files in the official layouts, written by the tests (10 records per file)

CIFAR_NAMES = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]


def _cifar_records(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            np.arange(n, dtype=np.uint8) % 10)


def _write_cifar_bin(folder: Path, n: int = 10) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for k, name in enumerate(CIFAR_NAMES):
        pixels, labels = _cifar_records(n, k)
        (folder / f"{name}.bin").write_bytes(
            np.concatenate([labels[:, None], pixels], axis=1).tobytes())
        written[name] = pixels, labels
    return written


def _write_cifar_pickles(folder: Path, n: int = 10) -> None:
    import pickle

    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(CIFAR_NAMES):
        pixels, labels = _cifar_records(n, k)
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
                 b"data": pixels, b"filenames": [f"{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))


def test_cifar10_binary_batches(tmp_path: Path) -> None:
    written = _write_cifar_bin(tmp_path / "cifar-10-batches-bin")
    ds = load_dataset(f"cifar10:{tmp_path}?val_fraction=0.2", seed=3)
    assert ds.feature_shape == (3, 32, 32) and ds.n_classes == 10
    assert ds.sizes == {"train": 40, "val": 10, "test": 10}
    assert ds.class_names[0] == "airplane"
    pixels, labels = written["test_batch"]
    # channel-major records: byte 1 + c*1024 + row*32 + col is pixel (c, row, col)
    expected = pixels.reshape(10, 3, 32, 32).astype(np.float32) / 255
    np.testing.assert_allclose(ds.x_test.numpy(), expected)
    assert ds.y_test.tolist() == labels.tolist()
    assert float(ds.x_test[0, 2, 31, 31]) == pytest.approx(pixels[0, 3071] / 255)


def test_cifar10_python_batches_read_like_the_binary(tmp_path: Path) -> None:
    _write_cifar_bin(tmp_path / "bin")
    _write_cifar_pickles(tmp_path / "cifar-10-batches-py")
    binary = load_dataset(f"cifar10:{tmp_path / 'bin'}")
    python = load_dataset(f"cifar10:{tmp_path}")
    assert binary.fingerprint() == python.fingerprint()


class _Exploit:
    """A pickle payload: unpickling it would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["os.system", "nested", "eval"])
def test_cifar10_pickle_with_code_is_refused_unrun(tmp_path: Path, payload: str) -> None:
    import pickle

    _write_cifar_pickles(tmp_path)
    marker = tmp_path / "pwned"
    command = f"__import__('os').system('touch {marker}')"
    data = {
        "os.system": pickle.dumps(_Exploit(marker), protocol=4),
        "nested": pickle.dumps({b"data": np.zeros((1, 3072), np.uint8),
                                b"labels": [_Exploit(marker)]}, protocol=4),
        # protocol 0 by hand: builtins.eval called on a string
        "eval": b"cbuiltins\neval\n(V" + command.encode() + b"\ntR.",
    }[payload]
    (tmp_path / "data_batch_3").write_bytes(data)
    with pytest.raises(DataError, match=r"data_batch_3 names (posix|os|builtins)\.(system|eval)"
                                         r"; only plain containers"):
        load_dataset(f"cifar10:{tmp_path}")
    assert not marker.exists()


@pytest.mark.parametrize(("damage", "message"), [
    (lambda p: p.write_bytes(p.read_bytes()[:-100]),
     r"data_batch_2\.bin is truncated or damaged: 30,630 bytes are 9 records of 3073 bytes "
     r"and 2,973 bytes more; each record is 1 label byte.*download the CIFAR-10 binary"),
    (lambda p: p.write_bytes(b""), r"data_batch_2\.bin is empty"),
    (lambda p: p.write_bytes(b"\x0c" + bytes(3072)), r"data_batch_2\.bin: record 0 has label 12"),
    (lambda p: p.unlink(), r"missing data_batch_2\.bin; expected the folder cifar-10-batches-bin"),
])
def test_cifar10_damaged_files_name_the_file_and_the_fix(tmp_path: Path, damage, message: str
                                                         ) -> None:
    _write_cifar_bin(tmp_path)
    damage(tmp_path / "data_batch_2.bin")
    with pytest.raises(DataError, match=message):
        load_dataset(f"cifar10:{tmp_path}")


@pytest.mark.parametrize(("setup", "message"), [
    (lambda p: None, r"no CIFAR-10 batches; expected the folder cifar-10-batches-bin"),
    (lambda p: (p / "data_batch_1").write_bytes(b"not a pickle"),
     r"missing data_batch_2, .*test_batch"),
    (lambda p: [(p / n).write_bytes(b"\x80\x04K\x01.") for n in CIFAR_NAMES],
     r"data_batch_1 is not a CIFAR-10 python batch"),
    (lambda p: [(p / n).write_bytes(b"\x80\x04}q") for n in CIFAR_NAMES],
     r"cannot read .*data_batch_1: (EOFError|UnpicklingError)"),
])
def test_cifar10_folder_errors(tmp_path: Path, setup, message: str) -> None:
    setup(tmp_path)
    with pytest.raises(DataError, match=message):
        load_dataset(f"cifar10:{tmp_path}")


def test_cifar10_needs_a_folder() -> None:
    with pytest.raises(DataError, match=r"cifar10: /no/such: no such folder"):
        load_dataset("cifar10:/no/such")
