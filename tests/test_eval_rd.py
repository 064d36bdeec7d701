"""rd-curve on a tiny model and made-up images: the per-image records against the files the codec
writes and decodes, the Table-4 numbers against those records (recomputed here by hand), the
HDF5 layout, and resume after an interruption."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ddpm_codec import codec
from ddpm_codec.eval import rd
from ddpm_codec.eval.store import ResultStore
from ddpm_codec.models.checkpoint import fresh_model, save_model, with_stats
from ddpm_codec.models.presets import get_preset

SETTINGS = codec.settings_with(2, num_steps=12, t_end=2, chunk_bits=6, log2_candidates=8)


def made_up_images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low = rng.normal(size=(n, 4, 4, 3))
    up = np.kron(low, np.ones((1, 8, 8, 1)))
    return np.clip(128 + 50 * up + rng.normal(scale=6, size=(n, 32, 32, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = fresh_model(get_preset("tiny"))
    return with_stats(m, np.concatenate([[0.0], np.geomspace(3e-4, 0.3, 1000)]))


@pytest.fixture(scope="module")
def store(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("rd") / "rd.h5"
    rd.run(made_up_images(3), model, path, settings=SETTINGS, dataset="made-up", progress=False)
    return path


def test_hdf5_layout_and_attributes(store, model):
    st = ResultStore(store)
    rt = st.read(rd.GROUP, "reverse_time")
    S = len(rt)
    assert S == SETTINGS.num_steps   # the prior step x_T plus num_steps - 1 chain steps
    assert rt[0] == 1 and np.all(np.diff(rt) > 0) and rt[-1] == 1000 - SETTINGS.t_end + 1
    np.testing.assert_array_equal(st.read(rd.GROUP, "t"), 1000 - rt + 1)
    for k in rd.PER_STEP:
        assert st.read(rd.GROUP, k).shape == (3, S), k
    for k in ("lossless_bpd", "lossless_model_bound_bpd", "lossless_adapted_bpd", "seconds"):
        assert st.read(rd.GROUP, k).shape == (3,)
    np.testing.assert_array_equal(st.read(rd.GROUP, "image_index"), [0, 1, 2])
    attrs = st.get_attrs(rd.GROUP)
    assert attrs["fingerprint"] == model.fingerprint and attrs["mode"] == "actual"
    assert attrs["dataset"] == "made-up" and attrs["settings"] == repr(SETTINGS)
    assert attrs["torch"] == torch.__version__


def test_records_match_the_files_the_codec_writes(store, model):
    st = ResultStore(store)
    rt = st.read(rd.GROUP, "reverse_time")
    imgs = made_up_images(3)
    for i, img in enumerate(imgs):
        data = codec.encode(img, model, settings=SETTINGS).data
        # the lossless total is the file, byte for byte
        assert st.read(rd.GROUP, "lossless_bpd")[i] == pytest.approx(8 * len(data) / img.size)
        # distortion at a table row equals that of what `decode --steps row` shows, computed here
        for row in (100, 500, 999):
            k = int(np.nonzero(rt <= row)[0][-1])
            dec = codec.decode(data, model, steps=row).image.astype(np.float64)
            rmse = math.sqrt(np.mean((dec - img) ** 2))
            assert st.read(rd.GROUP, "rmse")[i, k] == pytest.approx(rmse, rel=1e-9, abs=1e-9)
            psnr = 20 * math.log10(255 / rmse)
            assert st.read(rd.GROUP, "psnr")[i, k] == pytest.approx(psnr, rel=1e-9)
    cum = st.read(rd.GROUP, "cum_bpd")
    assert np.all(np.diff(cum, axis=1) >= 0) and np.all(cum[:, -1] < st.read(rd.GROUP, "lossless_bpd"))
    # cumulative columns are the running sums of the per-step columns
    dims = imgs[0].size
    np.testing.assert_allclose(st.read(rd.GROUP, "cum_kl_bpd"), np.cumsum(st.read(rd.GROUP, "kl_bits"), 1) / dims)


def _table_rows(md: str) -> dict[str, list[str]]:
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and (cells[0].isdigit() or cells[0] == "lossless"):
            rows[cells[0]] = cells
    return rows


def test_table_is_the_mean_of_the_records(store):
    st = ResultStore(store)
    rt = st.read(rd.GROUP, "reverse_time")
    cum, kl, rmse = st.read(rd.GROUP, "cum_bpd"), st.read(rd.GROUP, "cum_kl_bpd"), st.read(rd.GROUP, "rmse")
    rows = _table_rows(rd.markdown_table(rd.aggregate(store)))
    assert set(rows) == {str(r) for r in range(100, 1001, 100)} | {"lossless"}
    for row in range(100, 1001, 100):
        k = max(j for j in range(len(rt)) if rt[j] <= row)
        cells = rows[str(row)]
        assert float(cells[1]) == pytest.approx(kl[:, k].mean(), abs=6e-6)
        assert float(cells[2]) == pytest.approx(cum[:, k].mean(), abs=6e-6)
        mean_mse = (rmse[:, k] ** 2).mean()
        assert float(cells[4]) == pytest.approx(math.sqrt(mean_mse), abs=6e-3)
        # PSNR is that of the mean MSE (the header says so), the same mean as the RMSE column
        assert float(cells[5]) == pytest.approx(10 * math.log10(255 ** 2 / mean_mse), abs=6e-3)
    ll = rows["lossless"]
    assert float(ll[2]) == pytest.approx(st.read(rd.GROUP, "lossless_bpd").mean(), abs=6e-5)
    assert float(ll[1]) == pytest.approx(st.read(rd.GROUP, "lossless_model_bound_bpd").mean(), abs=6e-5)


def test_table_headers_name_the_definitions(store):
    md = rd.markdown_table(rd.aggregate(store))
    assert "PSNR of mean MSE (dB)" in md.splitlines()[0]
    assert "Lossless row, KL rate column: model bound" in md


def test_lossless_references_are_code_lengths_of_the_chain(store, model):
    st = ResultStore(store)
    kl_end = st.read(rd.GROUP, "cum_kl_bpd")[:, -1]
    bound, adapted = st.read(rd.GROUP, "lossless_model_bound_bpd"), st.read(rd.GROUP, "lossless_adapted_bpd")
    # both add x_0's code length (> 0 bits) to the chain's KLs
    assert np.all(bound > kl_end) and np.all(adapted > kl_end)
    # SETTINGS send no x_0 side information: the adapted decoder is the model's, and nothing is added
    assert SETTINGS.x0_scale_bits == SETTINGS.x0_channel_bits == 0
    np.testing.assert_allclose(adapted, bound, rtol=1e-12)
    labels = [r[0] for r in rd.aggregate(store).lossless_references()]
    assert labels == ["model bound", "adapted code length"]


@pytest.mark.parametrize("side", [False, True])
def test_older_stores_are_read_and_labelled_by_what_they_hold(store, model, tmp_path, side):
    """Stores from before the split hold one 'lossless_bound_bpd': KLs + x_0 under the adapted decoder
    without the side bits, which is the model bound exactly when the settings send no side information."""
    import shutil

    import h5py

    path = tmp_path / "old.h5"
    shutil.copy(store, path)
    with h5py.File(path, "a") as f:
        g = f[rd.GROUP]
        old = np.array(g["lossless_adapted_bpd"]) + 0.5
        del g["lossless_model_bound_bpd"], g["lossless_adapted_bpd"]
        g.create_dataset("lossless_bound_bpd", data=old)
        if side:
            g.attrs["settings"] = repr(codec.settings_with(9))   # profile 9: per-tile side information
    agg = rd.aggregate(path)
    md = rd.markdown_table(agg)
    ll = _table_rows(md)["lossless"]
    assert float(ll[1]) == pytest.approx(old.mean(), abs=6e-5)
    if side:
        assert math.isnan(agg.lossless_model_bound_bpd) and math.isnan(agg.lossless_adapted_bpd)
        assert agg.lossless_adapted_no_side_bpd == pytest.approx(old.mean())
        assert "side bits left out" in md and "not a bound" in md
    else:
        assert agg.lossless_model_bound_bpd == pytest.approx(old.mean())
        assert math.isnan(agg.lossless_adapted_no_side_bpd)
        assert "Lossless row, KL rate column: model bound" in md
    # an older store is read, but not resumed into (its rows would miss the new columns)
    with pytest.raises(ValueError, match="older version"):
        rd.run(made_up_images(4), model, path, settings=SETTINGS, progress=False)


def test_resume_after_interruption_equals_one_run(model, store, tmp_path):
    path = tmp_path / "rd.h5"
    imgs = made_up_images(3)
    rd.run(imgs[:2], model, path, settings=SETTINGS, progress=False)
    # a crash between the appends of image 2's record leaves some arrays one row ahead
    ResultStore(path).append_rows(rd.GROUP, "cum_bpd", np.zeros((1, SETTINGS.num_steps)))
    rd.run(imgs, model, path, settings=SETTINGS, progress=False)
    a, b = ResultStore(path), ResultStore(store)
    for k in rd.PER_STEP + ("lossless_bpd", "image_index"):
        np.testing.assert_array_equal(a.read(rd.GROUP, k), b.read(rd.GROUP, k), err_msg=k)
    # a finished run is not redone, and other settings are refused rather than mixed in
    assert rd.run(imgs, model, path, settings=SETTINGS, progress=False) == 3
    with pytest.raises(ValueError, match="another model"):
        rd.run(imgs, model, path, settings=codec.settings_with(2, num_steps=10, t_end=2, chunk_bits=6,
                                                              log2_candidates=8), progress=False)


def test_psnr_table_reads_rates_off_both_curves():
    # DDPM: PSNR 20 dB at 0.1 bits/dim, 30 dB at 1.0 (log-linear between); a codec at twice the bits
    ddpm_rate, ddpm_psnr = np.array([0.1, 1.0]), np.array([20.0, 30.0])
    dims = 3072
    rates = np.array([[0.2, 2.0]])                      # bits/dim of one image at two qualities
    rmse = 255 / 10 ** (np.array([[20.0, 30.0]]) / 20)   # the same PSNRs
    table = rd.psnr_table(ddpm_rate, ddpm_psnr, {"X": (rates * dims / 8, rmse)}, dims, levels=(15.0, 25.0))
    rows = _table_rows(table)
    assert rows["15"][1] == "–" and rows["15"][2] == "–"          # outside both curves
    assert float(rows["25"][1]) == pytest.approx(math.sqrt(0.1 * 1.0), abs=1e-3)
    assert rows["25"][2] == f"{2 * math.sqrt(0.1):.3f} (2.00)"


def test_theoretical_mode_has_kl_but_no_file(model, tmp_path):
    path = tmp_path / "th.h5"
    rd.run(made_up_images(2), model, path, settings=SETTINGS, theoretical=True, progress=False)
    st = ResultStore(path)
    assert np.all(np.isnan(st.read(rd.GROUP, "lossless_bpd")))
    kl = st.read(rd.GROUP, "cum_kl_bpd")
    assert np.all(np.diff(kl, axis=1) >= 0) and np.all(kl[:, -1] > 0)
    assert np.all(st.read(rd.GROUP, "lossless_model_bound_bpd") > kl[:, -1])
    # no side information in the KL-only trace: both references are the model's code length
    np.testing.assert_array_equal(st.read(rd.GROUP, "lossless_adapted_bpd"),
                                  st.read(rd.GROUP, "lossless_model_bound_bpd"))


def test_effort_rows_are_the_cuts_of_the_smallest_seeds_file(model, tmp_path):
    """``effort=2``: each image's lossless total is the smaller of the seed-0 and seed-1 files (encoded here one
    seed at a time), its per-step rows that file's; the store says so, refuses to resume at another effort, and
    the theoretical mode (no files) refuses an effort; the CLI passes ``--effort`` through and the report names it."""
    imgs = made_up_images(2, seed=5)
    path = tmp_path / "e.h5"
    rd.run(imgs, model, path, settings=SETTINGS, progress=False, effort=2)
    st = ResultStore(path)
    assert int(st.get_attrs(rd.GROUP)["effort"]) == 2
    for i, img in enumerate(imgs):
        tries = [codec.encode(img, model, settings=SETTINGS, seed=s) for s in (0, 1)]
        assert len(tries[0].data) != len(tries[1].data)   # two codebooks, two lengths: the choice matters
        kept = min(tries, key=lambda r: len(r.data))
        assert st.read(rd.GROUP, "lossless_bpd")[i] == pytest.approx(8 * len(kept.data) / img.size)
        np.testing.assert_allclose(st.read(rd.GROUP, "cum_bpd")[i], [r.cum_bpd for r in kept.steps])
    with pytest.raises(ValueError, match="effort 2, not 1"):
        rd.run(imgs, model, path, settings=SETTINGS, progress=False)
    with pytest.raises(ValueError, match="theoretical"):
        rd.run(imgs, model, tmp_path / "t.h5", settings=SETTINGS, theoretical=True, progress=False, effort=2)
    assert "the smallest of 2 seeds'" in rd.write_report(path, None)

    ckpt = save_model(tmp_path / "m.safetensors", model.net, model.config)
    np.savez(tmp_path / "d.npz", test_images=imgs[:1])
    from ddpm_codec.cli.main import main

    out = tmp_path / "c.h5"
    r = CliRunner().invoke(main, ["rd-curve", str(tmp_path / "d.npz"), "-n", "1", "--model", str(ckpt), "-o", str(out),
                                  "--no-baselines", "--profile", "2", "--coding-steps", "12", "--t-end", "2", "--chunk-bits", "6",
                                  "--log2-candidates", "8", "--effort", "2"])
    assert r.exit_code == 0, r.output
    assert "(--effort 2)" in r.output
    assert ResultStore(out).read(rd.GROUP, "lossless_bpd")[0] == pytest.approx(
        st.read(rd.GROUP, "lossless_bpd")[0], rel=1e-12)


def test_cli_runs_resumes_and_redraws(model, tmp_path):
    ckpt = save_model(tmp_path / "m.safetensors", model.net, model.config)
    np.savez(tmp_path / "d.npz", test_images=made_up_images(2))
    from ddpm_codec.cli.main import main

    out, plot = tmp_path / "r.h5", tmp_path / "rd.png"
    args = ["rd-curve", str(tmp_path / "d.npz"), "-n", "2", "--model", str(ckpt),
            "-o", str(out), "--plot", str(plot), "--coding-steps", "12", "--chunk-bits", "2",
            "--log2-candidates", "8"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "| 1000 |" in r.output and "webp" in r.output.lower() and "bits ratio" in r.output
    assert "| ddpm-codec (model bound) |" in r.output and "| ddpm-codec (adapted code length) |" in r.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "rd-time.png").read_bytes()[:4] == b"\x89PNG"
    plot.unlink()
    r2 = CliRunner().invoke(main, ["rd-curve", "--from", str(out), "--plot", str(plot)])
    assert r2.exit_code == 0, r2.output
    report = r.output[r.output.index("2 images"):r.output.index("plots:")]
    assert plot.exists() and r2.output[r2.output.index("2 images"):r2.output.index("plots:")] == report
    # --reconstruct is checked against the library's modes, and the message lists them all
    r3 = CliRunner().invoke(main, args[:-1] + ["8", "--reconstruct", "flow,sharpen"])
    assert r3.exit_code == 2 and "'sharpen'" in r3.output
    assert all(m in r3.output for m in codec.RECONSTRUCT_MODES)


def test_context_model_runs_store_and_label_their_own_code_length(model, tmp_path):
    """With the learned x_0 context model (no side information) the lossless reference is that model's
    code length, stored and labelled as such, never as an 'adapted' one."""
    from dataclasses import replace

    from ddpm_codec.models.checkpoint import with_x0_context
    from ddpm_codec.models.x0_context import ContextConfig, ContextX0Net

    torch.manual_seed(5)
    ctx_model = with_x0_context(model, ContextX0Net(ContextConfig(channels=8, blocks=1, scale=0.02, tau=2)))
    path = tmp_path / "ctx.h5"
    rd.run(made_up_images(1, seed=3), ctx_model, path, settings=replace(SETTINGS, x0_context=1), progress=False)
    st = ResultStore(path)
    assert st.has(rd.GROUP, "lossless_context_bpd") and not st.has(rd.GROUP, "lossless_adapted_bpd")
    agg = rd.aggregate(path)
    assert [r[0] for r in agg.lossless_references()] == ["model bound", "context-model code length"]
    assert agg.lossless_context_bpd > st.read(rd.GROUP, "cum_kl_bpd")[0, -1]   # KLs + x_0's bits > 0
