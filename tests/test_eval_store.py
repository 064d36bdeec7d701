import numpy as np
import pytest

from ddpm_codec.eval.store import ResultStore


def test_append_in_two_parts_equals_concatenation(tmp_path):
    path = tmp_path / "r.h5"
    rng = np.random.default_rng(0)
    first = rng.standard_normal((3, 5, 2))
    second = rng.standard_normal((4, 5, 2))
    s = ResultStore(path)
    assert s.num_rows("run/a", "x") == 0 and not s.has("run/a", "x")
    assert s.append_rows("run/a", "x", first) == 3
    assert ResultStore(path).num_rows("run/a", "x") == 3  # resume: a fresh handle sees the rows
    assert ResultStore(path).append_rows("run/a", "x", second) == 7
    np.testing.assert_array_equal(s.read("run/a", "x"), np.concatenate([first, second]))
    np.testing.assert_array_equal(s.read("run/a", "x", rows=slice(2, 4)), np.concatenate([first, second])[2:4])
    assert s.has("run/a", "x") and s.has("run") and s.has("/")
    assert s.keys("run") == ["a"]


def test_append_rejects_other_row_shape(tmp_path):
    s = ResultStore(tmp_path / "r.h5")
    s.append_rows("g", "x", np.zeros((2, 3)))
    with pytest.raises(ValueError):
        s.append_rows("g", "x", np.zeros((2, 4)))
    s.write_array("g", "fixed", np.zeros((2, 3)))
    with pytest.raises(ValueError):
        s.append_rows("g", "fixed", np.zeros((1, 3)))


def test_attributes_survive_reopening(tmp_path):
    path = tmp_path / "sub" / "r.h5"
    ResultStore(path).set_attrs("cifar", codec="ddpm", steps=1000, sigma=0.5, ok=True,
                                names=["a", "bc"], q=np.array([1.0, 2.5]))
    ResultStore(path).set_attrs("cifar", steps=500)  # update one, keep the others
    attrs = ResultStore(path).get_attrs("cifar")
    assert attrs["codec"] == "ddpm" and attrs["steps"] == 500 and attrs["sigma"] == 0.5
    assert attrs["ok"] is True and attrs["names"] == ["a", "bc"]
    np.testing.assert_array_equal(attrs["q"], [1.0, 2.5])
    assert ResultStore(path).get_attrs("nope") == {}


def test_write_array_overwrites_and_dicts_round_trip(tmp_path):
    s = ResultStore(tmp_path / "r.h5")
    s.write_array("g", "a", np.arange(4))
    s.write_array("g", "a", np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(s.read("g", "a"), np.arange(6).reshape(2, 3))
    tree = {"bytes": np.array([[1, 2], [3, 4]], dtype=np.int64),
            "names": np.array(["PNG", "JPEG XL"]),
            "sub": {"psnr": np.array([30.5, np.inf])}}
    s.write_dict("baselines", tree, attrs={"n_images": 2})
    back = ResultStore(tmp_path / "r.h5").read_dict("baselines")
    assert set(back) == {"bytes", "names", "sub"}
    np.testing.assert_array_equal(back["bytes"], tree["bytes"])
    assert back["bytes"].dtype == np.int64
    assert back["names"].tolist() == ["PNG", "JPEG XL"]
    np.testing.assert_array_equal(back["sub"]["psnr"], tree["sub"]["psnr"])
    assert s.get_attrs("baselines") == {"n_images": 2}
    with pytest.raises(KeyError):
        s.read("g", "missing")
