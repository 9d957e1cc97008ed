"""Ensemble files: atomic writes, metadata and the content hash check."""

from __future__ import annotations

import os

import numpy as np
import pytest

from neqgen.data.dataset import DatasetError, load_ensemble, save_ensemble


def example_arrays(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(4, 50, 2)).astype(np.float32), np.linspace(0.0, 1.0, 4)


def test_dataset_roundtrip_keeps_content_and_metadata(tmp_path):
    positions, times = example_arrays()
    written = save_ensemble(tmp_path / "train.npz", positions, times, {"seed": 3})

    loaded = load_ensemble(tmp_path / "train.npz")

    np.testing.assert_array_equal(loaded.positions, positions)
    np.testing.assert_array_equal(loaded.times, times)
    assert loaded.metadata["seed"] == 3
    assert loaded.content_hash == written.content_hash


def test_dataset_file_is_byte_identical_on_rewrite(tmp_path):
    positions, times = example_arrays()
    save_ensemble(tmp_path / "a.npz", positions, times, {"seed": 3})
    save_ensemble(tmp_path / "b.npz", positions, times, {"seed": 3})

    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_dataset_hash_depends_on_content(tmp_path):
    positions, times = example_arrays()
    first = save_ensemble(tmp_path / "a.npz", positions, times, {"seed": 3})
    positions[0, 0, 0] += 1e-3
    second = save_ensemble(tmp_path / "b.npz", positions, times, {"seed": 3})

    assert first.content_hash != second.content_hash


def test_dataset_rejects_flipped_byte(tmp_path):
    path = tmp_path / "train.npz"
    positions, times = example_arrays()
    save_ensemble(path, positions, times, {"seed": 3})
    raw = bytearray(path.read_bytes())
    # Flip a byte inside the positions array data (the first member of the archive).
    raw[400] ^= 0xFF
    path.write_bytes(bytes(raw))

    with pytest.raises(DatasetError, match="corrupted"):
        load_ensemble(path)


def test_dataset_rejects_edited_metadata(tmp_path):
    path = tmp_path / "train.npz"
    positions, times = example_arrays()
    save_ensemble(path, positions, times, {"seed": 3})
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["metadata"] = np.array(str(arrays["metadata"]).replace('"seed": 3', '"seed": 4'))
    np.savez(path, **arrays)

    with pytest.raises(DatasetError, match="failed its content hash check"):
        load_ensemble(path)


def test_dataset_rejects_truncated_file(tmp_path):
    path = tmp_path / "train.npz"
    positions, times = example_arrays()
    save_ensemble(path, positions, times, {"seed": 3})
    path.write_bytes(path.read_bytes()[:200])

    with pytest.raises(DatasetError, match="corrupted"):
        load_ensemble(path)


def test_dataset_refuses_nan_and_keeps_existing_file(tmp_path):
    path = tmp_path / "train.npz"
    positions, times = example_arrays()
    save_ensemble(path, positions, times, {"seed": 3})
    before = path.read_bytes()
    positions[1, 2, 0] = np.nan

    with pytest.raises(DatasetError, match="NaN or inf"):
        save_ensemble(path, positions, times, {"seed": 3})

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["train.npz"]


def test_missing_dataset_names_the_fix(tmp_path):
    with pytest.raises(DatasetError, match="neqgen simulate"):
        load_ensemble(tmp_path / "absent.npz")


def test_dataset_file_gets_umask_mode(tmp_path):
    path = tmp_path / "train.npz"
    positions, times = example_arrays()
    umask = os.umask(0o022)
    try:
        save_ensemble(path, positions, times, {"seed": 3})
    finally:
        os.umask(umask)

    assert path.stat().st_mode & 0o777 == 0o644
