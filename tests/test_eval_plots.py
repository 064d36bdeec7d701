import numpy as np
import pytest
from PIL import Image

from ddpm_codec.eval.plots import image_grid, plot_rd, plot_vs_time, save_image_grid, square_grid

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, size=None):
    data = path.read_bytes()
    assert len(data) > 0 and data[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        if size is not None:
            assert im.size == size


def test_plot_rd_writes_png(tmp_path):
    rates = np.array([0.5, 1.0, 2.0, 4.0])
    series = [
        {"label": "codec A", "x": rates, "y": 20 + 5 * np.log2(rates)},
        {"label": "codec B", "x": rates, "y": 18 + 5 * np.log2(rates), "style": "s--"},
        {"label": "lossless", "x": [5.0], "y": [np.inf], "style": {"marker": "*", "color": "k"}},
    ]
    p = plot_rd(series, tmp_path / "rd.png", title="test")
    _assert_png(tmp_path / "rd.png")
    assert str(p).endswith("rd.png")
    plot_rd(series, tmp_path / "deep" / "rd_log.png", log_x=True)
    _assert_png(tmp_path / "deep" / "rd_log.png")


def test_plot_vs_time_writes_png(tmp_path):
    t = np.arange(0, 1001, 50)
    panels = [
        {"y": "bits/dim", "series": [{"label": "rate", "x": t, "y": np.linspace(0, 4, len(t))}]},
        {"y": "RMSE", "log_y": True, "series": [{"label": "distortion", "x": t, "y": 1 + t / 10}]},
    ]
    plot_vs_time(panels, tmp_path / "t.png", title="vs time")
    _assert_png(tmp_path / "t.png")
    plot_vs_time(panels[0], tmp_path / "t1.png", invert_x=False)
    _assert_png(tmp_path / "t1.png")


def test_save_image_grid_layout(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 8, 6, 3), dtype=np.uint8)
    save_image_grid(imgs, tmp_path / "g.png", pad=2)
    # 5 images -> 3 columns x 2 rows; width 3*(6+2)+2 = 26, height 2*(8+2)+2 = 22
    _assert_png(tmp_path / "g.png", size=(26, 22))
    g = np.asarray(Image.open(tmp_path / "g.png"))
    np.testing.assert_array_equal(g[2:10, 2:8], imgs[0])
    np.testing.assert_array_equal(g[12:20, 10:16], imgs[4])
    assert np.all(g[12:20, 18:24] == 255)  # empty cell
    assert np.all(g[:2] == 255) and np.all(g[:, 8:10] == 255)  # padding


def test_save_image_grid_rows_and_scale(tmp_path):
    strips = np.zeros((2, 4, 4, 4, 3), dtype=np.uint8)
    strips[1, 3] = 200
    save_image_grid(strips, tmp_path / "s.png", pad=1, scale=2)
    _assert_png(tmp_path / "s.png", size=(4 * 9 + 1, 2 * 9 + 1))
    g = np.asarray(Image.open(tmp_path / "s.png"))
    assert np.all(g[10:18, 28:36] == 200)
    assert image_grid(strips[0, :, :, :, 0], pad=0).shape == (8, 8, 1)
    with pytest.raises(ValueError):
        image_grid(strips.astype(np.float32))


@pytest.mark.parametrize("n, rows, cols", [(1, 1, 1), (2, 1, 2), (4, 2, 2), (5, 2, 3), (7, 3, 3), (10, 3, 4),
                                           (17, 4, 5), (64, 8, 8), (65, 8, 9)])
def test_square_grid_is_near_square_row_major_and_padded_white(n, rows, cols):
    imgs = np.random.default_rng(n).integers(0, 255, size=(n, 5, 4, 3), dtype=np.uint8)   # never 255: padding is
    g = square_grid(imgs)
    assert g.shape == (rows, cols, 5, 4, 3) and g.dtype == np.uint8
    # the fewest columns c with c * c >= n, and no empty row
    assert (cols - 1) ** 2 < n <= cols ** 2 and (rows - 1) * cols < n <= rows * cols
    flat = g.reshape(rows * cols, 5, 4, 3)
    np.testing.assert_array_equal(flat[:n], imgs)          # in order, row by row
    assert np.all(flat[n:] == 255)                          # the rest white


def test_square_grid_keeps_dtype_and_pad_value_and_refuses_bad_shapes():
    g = square_grid(np.zeros((3, 2, 2, 1), np.float32), pad_value=7)
    assert g.shape == (2, 2, 2, 2, 1) and g.dtype == np.float32 and np.all(g[1, 1] == 7)
    with pytest.raises(ValueError):
        square_grid(np.zeros((0, 2, 2, 3), np.uint8))
    with pytest.raises(ValueError):
        square_grid(np.zeros((2, 2, 3), np.uint8))
