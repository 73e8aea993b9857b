"""The prepare stage: reproducible bytes, sound splits, manifest checksums, the CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from study.config import ConfigError, DataConfig, Dataset
from study.data import KEYS, MANIFEST, data_config, load, main, prepare, sha256_file

ROOT = Path(__file__).resolve().parent.parent
SMALL = 1000  # mnist1d samples: enough for 10 classes in every split, fast to generate


def configs(out: Path, seed: int = 0) -> list[DataConfig]:
    return [
        DataConfig(name=Dataset.mnist1d, dir=str(out), seed=seed, num_samples=SMALL),
        DataConfig(name=Dataset.digits, dir=str(out), seed=seed, val_fraction=0.2),
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    for cfg in configs(out):
        prepare(cfg)
    return out


def test_yaml_files_merge_onto_schema():
    m, d = data_config("mnist1d"), data_config("digits")
    assert (m.name, m.num_samples, m.val_fraction, m.test_fraction) == ("mnist1d", 5000, 0.1, 0.2)
    assert (d.name, d.val_fraction, d.test_fraction, d.target_accuracy) == ("digits", 0.2, 0.2, 0.9)


def test_same_seed_same_bytes_other_seed_other_bytes(built, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    for cfg in configs(again):
        prepare(cfg)
    for name in ("mnist1d.npz", "digits.npz"):
        assert (again / name).read_bytes() == (built / name).read_bytes()
    assert json.loads((again / MANIFEST).read_text()) == json.loads((built / MANIFEST).read_text())
    prepare(configs(other, seed=1)[0])
    assert (other / "mnist1d.npz").read_bytes() != (built / "mnist1d.npz").read_bytes()


@pytest.mark.parametrize(
    ("cfg_index", "sizes"),
    [(0, (700, 100, 200)), (1, (1077, 360, 360))],  # digits: 1797 = 1077 + 360 + 360
)
def test_split_sizes_classes_and_standardization(built, cfg_index, sizes):
    s = load(configs(built)[cfg_index])
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == sizes
    assert len(s.x_train) == sizes[0] and s.x_train.shape[1] == s.num_features
    assert s.num_classes == 10
    for y in (s.y_train, s.y_val, s.y_test):
        assert y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
    for x in (s.x_train, s.x_val, s.x_test):
        assert x.dtype == np.float32
    std = s.x_train.std(axis=0, dtype=np.float64)
    varying = std > 1e-6
    assert varying.sum() >= s.num_features - 5  # only digits has a few constant border pixels
    np.testing.assert_allclose(s.x_train.mean(axis=0, dtype=np.float64), 0, atol=1e-5)
    np.testing.assert_allclose(std[varying], 1, atol=1e-4)


@pytest.mark.parametrize("cfg_index", [0, 1])
def test_splits_are_disjoint(built, cfg_index):
    s = load(configs(built)[cfg_index])

    # Standardization is one affine map for all splits, so equal raw rows stay equal bytes.
    def rows(x):
        return {hashlib.sha256(r.tobytes()).hexdigest() for r in x}

    train, val, test = rows(s.x_train), rows(s.x_val), rows(s.x_test)
    assert len(train) == len(s.x_train)  # no duplicate rows to hide an overlap
    assert not train & test and not train & val and not val & test


def test_manifest_checksums_match_files_and_load(built):
    manifest = json.loads((built / MANIFEST).read_text())
    assert sorted(manifest) == ["digits", "mnist1d"]
    for cfg in configs(built):
        entry, path = manifest[cfg.name], built / f"{cfg.name}.npz"
        assert entry["file"] == path.name
        assert entry["sha256"] == sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
        assert load(cfg).sha256 == entry["sha256"]
        with np.load(path, allow_pickle=False) as npz:
            assert sorted(npz.files) == sorted(KEYS)
            for key in KEYS:
                assert entry["arrays"][key] == {
                    "shape": list(npz[key].shape),
                    "dtype": str(npz[key].dtype),
                }
    assert manifest["mnist1d"]["settings"]["num_samples"] == SMALL
    assert manifest["digits"]["settings"]["num_samples"] is None


def test_load_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(DataConfig(name=Dataset.digits, dir=str(tmp_path / "nowhere")))
    assert err.value.key == "data.name"
    assert "python -m study.data" in str(err.value)


def test_only_keeps_other_manifest_entries(tmp_path, capsys):
    prepare(configs(tmp_path)[0])
    main(["--out", str(tmp_path), "--only", "digits"])
    assert sorted(json.loads((tmp_path / MANIFEST).read_text())) == ["digits", "mnist1d"]
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("digits:")


def test_cli_writes_both_files(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "study.data", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "mnist1d.npz").is_file() and (tmp_path / "digits.npz").is_file()
    assert sorted(json.loads((tmp_path / MANIFEST).read_text())) == ["digits", "mnist1d"]
    assert len(proc.stdout.splitlines()) == 2


def test_cli_rejects_unknown_dataset_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "study.data", "--out", str(tmp_path), "--only", "bogus"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "study.data: --only: invalid value 'bogus', expected one of: mnist1d, digits"
    ]
    assert not any(tmp_path.iterdir())
