"""Reverse channel coding: exact ε on both sides, samples that follow q, real code lengths."""

import math
from dataclasses import replace
import time

import constriction
import numpy as np
import pytest
import torch

from ddpm_codec.coding import rcc, viterbi
from ddpm_codec.coding.rcc import bitstream, layout, search

D = 3072
CFG = rcc.RCCConfig(chunk_bits=8, log2_candidates=12)


def _pair(b, dim, kl_bits, var_q=0.01, ratio=1.0, seed=0):
    """μ_q, μ_p with KL(q‖p) = kl_bits per item (Δ isotropic), var_p = ratio·var_q."""
    g = torch.Generator().manual_seed(seed)
    var_p = var_q * ratio
    const = 0.5 * dim * (1 / ratio - 1 + math.log(ratio)) / math.log(2)
    need = max(kl_bits - const, 0.0)
    mu_p = torch.randn(b, dim, generator=g, dtype=torch.float64)
    d = torch.randn(b, dim, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True) * math.sqrt(2 * need * math.log(2) * var_p)
    return mu_p + d, mu_p, var_q, var_p


def _roundtrip(code, cfg, pred=None):
    enc = constriction.stream.queue.RangeEncoder()
    rcc.write_step(enc, code, cfg, pred)
    words = enc.get_compressed()
    dec = constriction.stream.queue.RangeDecoder(words)
    return rcc.read_step(dec, code.batch, code.dim, cfg, pred), enc.num_bits()


def _decode_without_mu(words, batch, dim, seed, step, cfg, pred):
    """The decoder's whole job: bytes + shared parameters -> ε (no access to μ_q)."""
    dec = constriction.stream.queue.RangeDecoder(words)
    code = rcc.read_step(dec, batch, dim, cfg, pred)
    return rcc.decode_step(code, dim=dim, seed=seed, step=step, cfg=cfg)


@pytest.mark.parametrize("ratio,selection", [(1.0, "pfr"), (1.3, "pfr"), (1.0, "mrc")])
def test_encoder_and_decoder_eps_identical(ratio, selection):
    cfg = rcc.RCCConfig(chunk_bits=8, log2_candidates=11, selection=selection)
    mu_q, mu_p, vq, vp = _pair(4, D, 0.0, ratio=ratio)
    kls = [0.2, 25.0, 300.0, 40.0]  # one free step, different chunk counts
    for b, k in enumerate(kls):
        q1, p1, _, _ = _pair(1, D, k, ratio=ratio, seed=b + 10)
        mu_q[b], mu_p[b] = q1[0], p1[0]
    gen = torch.Generator().manual_seed(1)
    code, eps, rep = rcc.encode_step(mu_q, mu_p, vq, vp, seed=3, step=17, cfg=cfg, generator=gen)
    assert eps.shape == (4, D) and eps.dtype == torch.float32
    if ratio == 1.0:
        assert code.num_chunks[0] == 0 and rep.free_bits[0] > 0
    assert all(len(code.indices[b]) == code.num_chunks[b] for b in range(4))
    pred = rcc.expected_chunks(100.0, D, cfg)
    enc = constriction.stream.queue.RangeEncoder()
    rcc.write_step(enc, code, cfg, pred)
    eps_dec = _decode_without_mu(enc.get_compressed(), 4, D, 3, 17, cfg, pred)
    assert torch.equal(eps, eps_dec)
    # a different step or seed gives different noise
    assert not torch.equal(eps_dec, rcc.decode_step(code, dim=D, seed=3, step=18, cfg=cfg))


def test_empirical_distribution_matches_q_low_dim():
    """D = 2, KL ≈ 3 bits, M = 2^10, 2000 trials.

    PFR with finite M truncates q's tail along Δ (RCC-NOTES: 1-D, KL = 4 bits, N = 2^11 gave mean
    2.311 vs 2.355 and variance 0.918 vs 1). At KL = 3 bits and M = 2^10 our 1-D simulation
    gives mean ≈ 0.99 and variance ≈ 0.88 of q's along Δ; orthogonal to Δ q = p, unbiased.
    """
    n, dim = 2000, 2
    cfg = rcc.RCCConfig(chunk_bits=8, log2_candidates=10, min_step_bits=0.5)
    var = 0.04
    a = math.sqrt(2 * 3.0 * math.log(2) * var)  # |Δ| for KL = 3 bits
    mu_p = torch.zeros(n, dim, dtype=torch.float64)
    mu_q = mu_p.clone()
    mu_q[:, 0] = a
    gen = torch.Generator().manual_seed(0)
    code, eps, rep = rcc.encode_step(mu_q, mu_p, var, var, seed=99, step=1, cfg=cfg, generator=gen)
    assert np.allclose(rep.kl_bits, 3.0)
    assert (code.num_chunks == 1).all()
    z = (mu_p + math.sqrt(var) * eps.double()).numpy()
    along, ortho = z[:, 0] / math.sqrt(var), z[:, 1] / math.sqrt(var)  # q: N(a/σ, 1) and N(0, 1)
    target = a / math.sqrt(var)
    se = 1 / math.sqrt(n)
    assert 0.95 * target - 4 * se < along.mean() < target + 4 * se
    assert 0.75 < along.var() < 1.0 + 4 * math.sqrt(2 / n)
    # log2 q/p at the selected z: E_q[.] = KL = 3 bits; truncation costs ~0.1 bit here
    assert 2.6 < rep.selected_log_w_bits.mean() < 3.0 + 4 * 2.9 / math.sqrt(n)
    assert abs(ortho.mean()) < 4 * se
    assert abs(ortho.var() - 1) < 4 * math.sqrt(2 / n)
    # the free path (KL below min_step_bits) is a draw from p
    code0, eps0, rep0 = rcc.encode_step(mu_p + 1e-4, mu_p, var, var, seed=99, step=2, cfg=cfg, generator=gen)
    assert (code0.num_chunks == 0).all() and abs(eps0[:, 0].double().mean()) < 4 * se


def test_steps_reusing_the_pool_still_match_q():
    """20 steps of one item reuse the same pool: ε stays N(0, I) off Δ, steps uncorrelated."""
    cfg = rcc.RCCConfig(chunk_bits=8, log2_candidates=11)
    gen = torch.Generator().manual_seed(5)
    eps_all, ratios = [], []
    for step in range(20):
        mu_q, mu_p, vq, vp = _pair(1, D, 60.0, seed=100 + step)
        code, eps, rep = rcc.encode_step(mu_q, mu_p, vq, vp, seed=7, step=step, cfg=cfg, generator=gen)
        uhat = (mu_q - mu_p) / (mu_q - mu_p).norm()
        resid = eps.double() - (eps.double() * uhat).sum() * uhat  # component off Δ
        eps_all.append(resid[0].numpy())
        ratios.append(rep.proj[0] / rep.proj_target_mean[0])
    e = np.stack(eps_all)  # [20, D]
    assert abs(e.mean()) < 5 / math.sqrt(e.size)
    assert abs(e.var() * D / (D - 1) - 1) < 5 * math.sqrt(2 / e.size)
    c = np.corrcoef(e)[np.triu_indices(20, 1)]
    assert np.abs(c).max() < 5 / math.sqrt(D)
    assert 0.75 < np.mean(ratios) < 1.05


def test_index_code_length():
    """Real bits of many chunks ≈ KL + overhead; within 1 bit/chunk of the model's entropy."""
    cfg = CFG
    mu_q, mu_p, vq, vp = _pair(24, D, 300.0, seed=3)
    gen = torch.Generator().manual_seed(2)
    code, eps, rep = rcc.encode_step(mu_q, mu_p, vq, vp, seed=1, step=5, cfg=cfg, generator=gen)
    chunks = int(code.num_chunks.sum())
    assert chunks == sum(rcc.num_chunks_for(k, D, cfg) for k in rep.kl_bits)
    assert np.all(np.abs(code.num_chunks - 300 / 8) <= 1)
    pred = rcc.expected_chunks(300.0, D, cfg)
    code2, bits = _roundtrip(code, cfg, pred)
    assert all(np.array_equal(a, b) for a, b in zip(code.indices, code2.indices))
    kl = rep.kl_bits.sum()
    assert 0.9 * kl < bits < 1.45 * kl
    # compare with the plug-in entropy of the observed buckets + their raw bits
    idx = np.concatenate(code.indices)
    b = bitstream.bucket(idx)
    freq = np.bincount(b, minlength=cfg.log2_candidates + 1) / len(b)
    ent = -(freq[freq > 0] * np.log2(freq[freq > 0])).sum() + np.where(b < cfg.log2_candidates, b, 0).mean()
    assert abs(bits / chunks - ent) < 1.0
    assert abs(bits - rep.est_index_bits.sum()) < 64 + 0.05 * bits  # report ≈ real (C costs ~0 here)


def test_mrc_index_is_flat():
    cfg = rcc.RCCConfig(chunk_bits=8, log2_candidates=10, selection="mrc")
    mu_q, mu_p, vq, vp = _pair(8, 256, 80.0)
    code, _, _ = rcc.encode_step(mu_q, mu_p, vq, vp, seed=1, step=1, cfg=cfg, generator=torch.Generator().manual_seed(0))
    code2, bits = _roundtrip(code, cfg, pred=rcc.expected_chunks(80.0, 256, cfg))
    assert all(np.array_equal(a, b) for a, b in zip(code.indices, code2.indices))
    assert abs(bits - 10 * code.num_chunks.sum()) <= 64


def test_free_steps_cost_nothing():
    n = 1000
    mu_q, mu_p, vq, vp = _pair(n, 64, 0.01)
    code, eps, rep = rcc.encode_step(mu_q, mu_p, vq, vp, seed=1, step=3, cfg=CFG, generator=torch.Generator())
    assert (code.num_chunks == 0).all() and (rep.est_index_bits == 0).all()
    assert np.allclose(rep.free_bits, rep.kl_bits)
    _, bits = _roundtrip(code, CFG, pred=0.0)
    assert bits <= 32  # one 32-bit word of range-coder flush for 1000 items: < 0.04 bits/item
    # without a prediction C=0 costs the Elias-gamma-like default's first symbol
    _, bits_none = _roundtrip(code, CFG, pred=None)
    assert bits_none < n * 4.0


def test_chunk_count_model_round_trips_everything():
    nc = np.array([0, 1, 2, 3, 7, 64, 500, D, 45])
    code = rcc.StepCode(num_chunks=nc, indices=[np.arange(c, dtype=np.int64) % 4096 for c in nc], dim=D)
    for pred in (None, 0.0, 3.0, 47.2, float(D)):
        code2, _ = _roundtrip(code, CFG, pred)
        assert np.array_equal(code2.num_chunks, nc)
        assert all(np.array_equal(a, b) for a, b in zip(code.indices, code2.indices))


def test_edge_indices_round_trip():
    m = CFG.num_candidates
    idx = np.array([0, 1, 2, 3, m - 2, m - 1, m // 2, 6], dtype=np.int64)
    code = rcc.StepCode(num_chunks=np.array([len(idx)]), indices=[idx], dim=D)
    code2, _ = _roundtrip(code, CFG, None)
    assert np.array_equal(code2.indices[0], idx)
    with pytest.raises(ValueError):
        _roundtrip(rcc.StepCode(num_chunks=np.array([1]), indices=[np.array([m])], dim=D), CFG)
    with pytest.raises(ValueError):
        _roundtrip(rcc.StepCode(num_chunks=np.array([2]), indices=[np.array([1])], dim=D), CFG)


def test_pinned_bytes_and_eps():
    """Format stability of a tiny fixed case: bucket table, raw bits, C model, pool layout."""
    code = rcc.StepCode(num_chunks=np.array([2, 0, 1]), indices=[np.array([5, 300]), np.zeros(0, np.int64),
                                                                   np.array([4095])], dim=16)
    enc = constriction.stream.queue.RangeEncoder()
    rcc.write_step(enc, code, CFG, predicted_chunks=1.0)
    assert enc.get_compressed().tolist() == PINNED_WORDS
    eps = rcc.decode_step(code, dim=16, seed=1, step=2, cfg=CFG)
    assert eps[:, :3].numpy().view(np.uint32).tolist() == PINNED_EPS_BITS


PINNED_WORDS = [3555481152, 2180049459]
PINNED_EPS_BITS = [[1067880547, 3207676578, 3213558093], [3206726519, 1069546259, 3219438409],
                   [1062602618, 3200169792, 3202363489]]


def test_kl_bits_matches_monte_carlo():
    mu_q, mu_p, vq, vp = _pair(2, 50, 12.0, ratio=1.3, seed=4)
    kl = rcc.kl_bits(mu_q, mu_p, vq, vp)
    assert kl.dtype == torch.float64 and kl.shape == (2,)
    g = torch.Generator().manual_seed(0)
    n = 20000
    z = mu_q[:, None, :] + math.sqrt(vq) * torch.randn(2, n, 50, generator=g, dtype=torch.float64)
    logq = -0.5 * ((z - mu_q[:, None]) ** 2).sum(-1) / vq - 25 * math.log(vq)
    logp = -0.5 * ((z - mu_p[:, None]) ** 2).sum(-1) / vp - 25 * math.log(vp)
    lr = (logq - logp) / math.log(2)
    mc, se = lr.mean(1), lr.std(1) / math.sqrt(n)
    assert torch.all((mc - kl).abs() < 4 * se)
    assert torch.allclose(rcc.kl_bits(mu_p, mu_p, 1.0, 1.0), torch.zeros(2, dtype=torch.float64))


def test_read_step_on_garbage_is_quick_and_safe():
    rng = np.random.default_rng(0)
    for trial in range(60):
        words = rng.integers(0, 2**32, rng.integers(0, 40), dtype=np.uint64).astype(np.uint32)
        pred = [None, 0.0, 5.0][trial % 3]
        t0 = time.perf_counter()
        try:
            code = rcc.read_step(constriction.stream.queue.RangeDecoder(words), 8, D, CFG, pred)
        except ValueError:
            continue
        finally:
            assert time.perf_counter() - t0 < 1.0
        assert code.num_chunks.max() <= D
        assert all(len(i) == c for i, c in zip(code.indices, code.num_chunks))
        assert all((i < CFG.num_candidates).all() for i in code.indices if len(i))


def test_config_validation():
    with pytest.raises(ValueError, match="bogus"):
        rcc.RCCConfig(selection="bogus")
    for bad in (dict(chunk_bits=0), dict(log2_candidates=0), dict(log2_candidates=40), dict(min_step_bits=-1)):
        with pytest.raises(ValueError):
            rcc.RCCConfig(**bad)
    mu = torch.zeros(2, 8)
    with pytest.raises(ValueError):
        rcc.encode_step(mu, mu, 0.0, 1.0, seed=0, step=0, cfg=CFG, generator=torch.Generator())
    with pytest.raises(ValueError):
        rcc.encode_step(mu, mu[:1], 1.0, 1.0, seed=0, step=0, cfg=CFG, generator=torch.Generator())
    with pytest.raises(ValueError):
        rcc.read_step(constriction.stream.queue.RangeDecoder(np.zeros(2, np.uint32)), 1, D, CFG, float("nan"))


def test_bucket_tables_are_sane():
    for k in (6, 8, 10, 12):
        for a in (1, 2, 3, 4):
            p = rcc.index_bucket_probs(rcc.RCCConfig(chunk_bits=k, log2_candidates=k + a))
            assert len(p) == k + a + 1 and abs(p.sum() - 1) < 1e-12 and (p > 0).all()
    p = rcc.index_bucket_probs(rcc.RCCConfig(chunk_bits=7.3, log2_candidates=11))  # fallback shape
    assert len(p) == 12 and (p > 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_encoder_matches_cpu_decoder():
    cfg = rcc.RCCConfig(chunk_bits=8, log2_candidates=11)
    mu_q, mu_p, vq, vp = _pair(3, D, 200.0, ratio=1.3)
    gen = torch.Generator(device="cuda").manual_seed(0)
    code, eps, _ = rcc.encode_step(mu_q.cuda(), mu_p.cuda(), vq, vp, seed=1, step=1, cfg=cfg, generator=gen)
    assert eps.device.type == "cuda"
    assert torch.equal(eps.cpu(), rcc.decode_step(code, dim=D, seed=1, step=1, cfg=cfg))


def test_torch_selection_path_on_cpu():
    """The GPU code path (torch arrival times) run on CPU: valid code, exact ε, sane samples."""
    cfg = rcc.RCCConfig(chunk_bits=8, log2_candidates=10)
    mu_q, mu_p, vq, vp = _pair(6, 512, 40.0, ratio=1.3, seed=8)
    code, eps, rep = rcc.encode_step(mu_q, mu_p, vq, vp, seed=2, step=9, cfg=cfg,
                                     generator=torch.Generator().manual_seed(0), kernel="torch")
    assert torch.equal(eps, rcc.decode_step(code, dim=512, seed=2, step=9, cfg=cfg))
    assert 0.6 < np.mean(rep.proj / rep.proj_target_mean) < 1.1


# ----------------------------------------------------------------------------- trellis coder


def _trellis(b, L, **kw):
    return rcc.RCCConfig(chunk_bits=b, log2_candidates=L, selection="trellis", **kw)


def _paths(c, b, state_bits):
    """Every path of c segments: candidate indices n_j = σ_j·2^b + y_j, σ_{j+1} = n_j mod S."""
    import itertools

    S, B = 1 << state_bits, 1 << b
    for ys in itertools.product(range(B), repeat=c):
        idx, sig = [], 0
        for y in ys:
            idx.append(sig * B + y)
            sig = idx[-1] % S
        yield np.array(idx)


@pytest.mark.parametrize("b,L,ratio,reuse", [(2, 6, 1.0, 0), (2, 6, 1.2, 0), (3, 3, 1.0, 0), (2, 2, 0.8, 0),
                                             (1, 4, 1.0, 0), (2, 4, 1.0, 1), (2, 4, 1.1, 2), (1, 3, 1.0, 2),
                                             (1, 3, 1.0, 4), (2, 4, 1.0, 3)])
def test_trellis_viterbi_finds_the_best_path(b, L, ratio, reuse):
    """Brute force over every path of the trellis codebook: Viterbi's path has the largest log q/p
    (computed here from the decoded ε and the two Gaussian densities, not from the coder's scores).
    With ``reuse`` the trellis has 2^reuse times the states on the same 2^L pool rows: the codebook
    is whatever the decoder's ``_item_epsilon`` makes of each index sequence."""
    dim, c = 20, 5
    g = torch.Generator().manual_seed(b * 100 + L)
    mu_p = torch.randn(1, dim, generator=g, dtype=torch.float64)
    mu_q = mu_p + 0.7 * torch.randn(1, dim, generator=g, dtype=torch.float64)
    vq, vp = 0.5, 0.5 * ratio
    kl = float(rcc.kl_bits(mu_q, mu_p, vq, vp)[0])
    cfg = _trellis(b, L, min_step_bits=0.0, rate_factor=c * b / kl, reuse_bits=reuse)
    code, eps, rep = rcc.encode_step(mu_q, mu_p, vq, vp, seed=3, step=7, cfg=cfg, generator=torch.Generator())
    assert code.num_chunks[0] == c
    assert cfg.state_bits == L - b + reuse

    def log_w(e):
        z = mu_p[0] + math.sqrt(vp) * e
        return float((-(z - mu_q[0]) ** 2 / (2 * vq) + (z - mu_p[0]) ** 2 / (2 * vp)).sum())

    m = 1 << L
    scores = {tuple(p): log_w(torch.from_numpy(layout.item_epsilon(3, 7, 0, dim, m, p)).double())
              for p in _paths(c, b, cfg.state_bits)}
    assert len(scores) == (1 << b) ** c
    best = max(scores, key=scores.get)
    assert tuple(code.indices[0]) == best
    assert log_w(eps[0].double()) == pytest.approx(scores[best], abs=1e-9)


def _compiled_and_torch_agree(cfg, g: int, c: int, feeds, seed: int) -> None:
    """The numba recursion and the torch one, fed the same scores in the same blocks of segments
    (``feeds``), end with the same scores, back pointers and paths: on random scores and on scores
    with many exact ties (small integers)."""
    m = cfg.num_candidates
    rng = np.random.default_rng(seed)
    for tied in (False, True):
        s = rng.integers(0, 3, (c, g, m)) if tied else rng.standard_normal((c, g, m))
        s = torch.from_numpy(s.astype(np.float32))
        offsets = [int(v) for v in rng.integers(0, m, g)]
        runs = []
        for force_torch in (False, True):
            v = search.Viterbi(g, c, cfg, "cpu", kernel="torch" if force_torch else "auto")
            assert v.compiled == (not force_torch)
            for lo, hi in feeds:
                v.feed(s[lo:hi].clone(), offsets)
            score = v.score if v.compiled else v.score.numpy()
            back = v.back if v.compiled else v.back.numpy()
            runs.append((score.copy(), back.astype(np.int64), v.best_paths()))
        for a, b_ in zip(*runs):
            assert np.array_equal(a, b_)


@pytest.mark.skipif(not viterbi.HAVE_KERNEL, reason="numba not installed")
@pytest.mark.parametrize("b,L,reuse,g", [(4, 10, 0, 1), (4, 10, 3, 3), (2, 6, 2, 2), (3, 9, 1, 1), (4, 8, 4, 2)])
def test_compiled_viterbi_equals_the_torch_recursion(b, L, reuse, g):
    """The numba recursion (coding.viterbi) and the torch one make the same decisions, fed in
    uneven blocks of segments."""
    _compiled_and_torch_agree(_trellis(b, L, reuse_bits=reuse), g, 23, ((0, 1), (1, 8), (8, 23)),
                              b * 1000 + L * 10 + reuse)


@pytest.mark.skipif(not viterbi.HAVE_KERNEL, reason="numba not installed")
@pytest.mark.parametrize("threads,items", [(1, 16), (2, 16), (3, 16), (1, 2), (2, 1)])
def test_threaded_viterbi_equals_the_torch_recursion(threads, items, monkeypatch):
    """Splitting each segment's new states between threads (trellises with >= 64 state blocks), and
    the items between kernel calls, makes the same decisions as the torch recursion: scores, back
    pointers and paths, ties included."""
    monkeypatch.setattr(viterbi, "ITEMS_PER_CALL", items)
    cfg = _trellis(4, 12, reuse_bits=2, search_threads=threads)   # 2^10 states; threads: the encoder's policy
    assert search.Viterbi(3, 9, cfg, "cpu").threads == threads
    _compiled_and_torch_agree(cfg, 3, 9, ((0, 2), (2, 9)), threads)


def _reference_segment(score, row, r, shift, B, M):
    """One segment of the recursion by brute force (numpy): new state σ' = h·B + y has the B
    predecessors σ = k·H + h, candidate n = k·S + σ' on pool row (n mod M + r + (n div M)·shift) mod
    M; the best score and its k, ties to the largest k."""
    S = score.shape[0]
    H = S // B
    k = np.arange(B)[:, None]
    sig = np.arange(S)[None, :]
    n = k * S + sig
    rows = (n % M + r + (n // M) * shift) % M
    cand = score[k * H + sig // B] + row[rows]                      # [B, S], float32
    best = cand.max(0)
    arg = B - 1 - np.argmax(cand[::-1] == best, axis=0)
    return best, arg


@pytest.mark.skipif(not viterbi.HAVE_KERNEL, reason="numba not installed")
@pytest.mark.parametrize("log2_s,log2_m", [(13, 9), (12, 14), (14, 10)])
@pytest.mark.parametrize("threads", [1, 2])
def test_tiled_viterbi_kernel_against_brute_force(log2_s, log2_m, threads):
    """The compiled kernel's tiles (up to 128 blocks of B = 16 states, cut where candidates cross a
    multiple of M) against a brute-force segment: trellises with more states than pool rows and
    fewer, several tiles per segment, random and tied scores, and the first segments (where only
    states below B^j are reached)."""
    B, M, S, G, C = 16, 1 << log2_m, 1 << log2_s, 2, 6
    rng = np.random.default_rng(log2_s * 100 + log2_m + threads)
    for tied in (False, True):
        s = (rng.integers(0, 3, (C, G, M)) if tied else rng.standard_normal((C, G, M))).astype(np.float32)
        offsets = rng.integers(0, M, G).astype(np.int64)
        shifts = rng.integers(0, M, C).astype(np.int64) | 1
        for j0 in (0, 1, 4):
            score = np.full((G, S), -np.inf, np.float32)
            score[:, 0] = 0.0
            if j0 == 4:                                     # a later segment: every state reached
                score = (rng.integers(0, 4, (G, S)) if tied else rng.standard_normal((G, S))).astype(np.float32)
            want_score = score.copy()
            back = np.zeros((j0 + C, G, S), np.int8)
            viterbi.feed_kernel(s, offsets, shifts, score, back, j0, B, threads=threads)
            for j in range(C):
                for g in range(G):
                    best, arg = _reference_segment(want_score[g], s[j, g], int(offsets[g]), int(shifts[j]), B, M)
                    assert np.array_equal(back[j0 + j, g], arg), (tied, j0, j, g)
                    want_score[g] = best
            assert np.array_equal(score, want_score)


def test_trellis_stream_roundtrip_and_exact_length():
    """Decoder gets ε bit-exact from the bytes; the path costs exactly C·b raw bits and C is
    round(f·KL/b); indices that are no path through the trellis are refused."""
    cfg = _trellis(4, 10, rate_factor=1.1)  # S = 64 states
    mu_q, mu_p, vq, vp = _pair(3, D, 0.0)
    for i, k in enumerate([0.5, 40.0, 400.0]):
        q1, p1, _, _ = _pair(1, D, k, seed=i + 40)
        mu_q[i], mu_p[i] = q1[0], p1[0]
    code, eps, rep = rcc.encode_step(mu_q, mu_p, vq, vp, seed=5, step=9, cfg=cfg, generator=torch.Generator())
    assert code.num_chunks[0] == 0
    assert list(code.num_chunks[1:]) == [round(1.1 * k / 4) for k in rep.kl_bits[1:]]
    assert list(rep.est_index_bits) == [4.0 * c for c in code.num_chunks]
    for pred in (None, 30.0, np.array([0.0, 11.0, 110.0])):
        enc = constriction.stream.queue.RangeEncoder()
        rcc.write_step(enc, code, cfg, pred)
        words = enc.get_compressed()
        assert torch.equal(_decode_without_mu(words, 3, D, 5, 9, cfg, pred), eps)
        enc_counts = constriction.stream.queue.RangeEncoder()
        bitstream.write_counts(enc_counts, code.num_chunks, D, cfg, pred)
        # paths are raw bits: the step's length is the counts' plus C·b (range coder: ±32 bits)
        assert abs(enc.num_bits() - enc_counts.num_bits() - 4 * code.num_chunks.sum()) <= 32
    bad = rcc.StepCode(num_chunks=code.num_chunks.copy(), indices=[i.copy() for i in code.indices], dim=D)
    bad.indices[2][1] ^= 1 << 6  # flips a state bit: not reachable from the previous segment
    with pytest.raises(ValueError, match="not a path"):
        rcc.write_step(constriction.stream.queue.RangeEncoder(), bad, cfg)
    with pytest.raises(ValueError, match="not a path"):
        rcc.decode_step(bad, dim=D, seed=5, step=9, cfg=cfg)


def test_trellis_delivered_information_between_closed_forms():
    """Information log2 q/p delivered at the selected ε, equal variances, against two independent
    closed forms. With one state (S = 1) the segments are independent best-of-2^b choices, so
    E[info] = Σ_j |u_j|·E[max of 2^b N(0,1)] − |u|²/2 nats (E max of 16 = 1.76599). Any codebook
    of 2^R draws from p delivers at most |u|·sqrt(2 R ln 2) − |u|²/2 (E max ≤ sqrt(2 ln N)). A
    64-state trellis must land between the two, well above the one-state figure."""
    kl, dim, n = 200.0, 512, 12
    info = {}
    for L in (4, 10):
        cfg = _trellis(4, L, rate_factor=1.0)
        got, expect_s1 = [], []
        for i in range(n):
            mu_q, mu_p, vq, vp = _pair(1, dim, kl, seed=500 + i)
            code, eps, rep = rcc.encode_step(mu_q, mu_p, vq, vp, seed=i, step=1, cfg=cfg, generator=torch.Generator())
            got.append(rep.selected_log_w_bits[0])
            c = int(code.num_chunks[0])
            assert c == 50
            u = ((mu_q - mu_p)[0] / math.sqrt(vp)).numpy()
            perm, _, _ = layout.item_layout(i, 1, 0, dim, cfg.num_candidates)
            bounds = layout.block_bounds(dim, c)
            un = np.array([np.linalg.norm(u[perm[bounds[j]:bounds[j + 1]]]) for j in range(c)])
            expect_s1.append((un.sum() * 1.76599 - (u ** 2).sum() / 2) / math.log(2))
        info[L] = (np.mean(got), np.mean(expect_s1))
    s1_got, s1_expect = info[4]
    assert abs(s1_got - s1_expect) < 0.04 * kl  # the spread of a sum of 50 maxima: ~2.5 bits per image
    # R = C·b = 200 path bits = KL: |u|·sqrt(2 R ln 2) − |u|²/2 with |u|² = 2 KL ln 2 is KL itself
    upper = (math.sqrt(2 * kl * math.log(2)) * math.sqrt(2 * 200 * math.log(2)) - kl * math.log(2)) / math.log(2)
    tr = info[10][0]
    assert s1_got + 0.1 * kl < tr < upper


def test_trellis_config_validation():
    with pytest.raises(ValueError, match="state bits"):
        _trellis(4, 6)  # 2 state bits < 4 path bits per segment
    with pytest.raises(ValueError, match="integer"):
        rcc.RCCConfig(chunk_bits=2.5, log2_candidates=8, selection="trellis")
    with pytest.raises(ValueError, match="rate_factor"):
        _trellis(2, 8, rate_factor=10.0)
    with pytest.raises(ValueError, match="reuse_bits"):
        rcc.RCCConfig(chunk_bits=8, log2_candidates=12, reuse_bits=1)  # PFR has no states to multiply
    with pytest.raises(ValueError, match="reuse_bits"):
        _trellis(4, 4, reuse_bits=2)  # a one-state trellis: no state groups
    assert _trellis(4, 14, reuse_bits=2).num_indices == 1 << 16
    assert _trellis(4, 14).state_bits == 10 and _trellis(4, 4).state_bits == 0


def test_count_model_per_item_predictions():
    """Items with different predictions are coded in groups; the decoder regroups them the same way."""
    cfg = CFG
    nc = np.array([3, 40, 0, 41, 7], np.int64)
    code = rcc.StepCode(num_chunks=nc, indices=[np.zeros(c, np.int64) for c in nc], dim=D)
    pred = np.array([3.2, 39.6, 0.0, 40.4, 7.0])
    back, bits = _roundtrip(code, cfg, pred)
    assert np.array_equal(back.num_chunks, nc)
    # groups: {3: [0]}, {40: [1, 3]}, {0: [2]}, {7: [4]}
    assert [(c, list(m)) for c, m in bitstream.count_groups(pred, 5)] == [(3.0, [0]), (40.0, [1, 3]), (0.0, [2]), (7.0, [4])]
    with pytest.raises(ValueError, match="finite"):
        bitstream.count_groups(np.array([1.0, np.nan]), 2)


def test_trellis_items_searched_together_match_alone():
    """Items with equal C share the pool pass and one batched Viterbi: each item's path equals the
    one it gets when the other items of the batch are free steps (searched alone)."""
    cfg = _trellis(4, 10, rate_factor=1.1)
    mu_q, mu_p, vq, vp = _pair(3, D, 120.0, seed=9)  # equal KL -> equal C: one group of 3
    code, eps, _ = rcc.encode_step(mu_q, mu_p, vq, vp, seed=4, step=6, cfg=cfg, generator=torch.Generator())
    assert len(set(code.num_chunks.tolist())) == 1 and code.num_chunks[0] > 1
    for i in range(3):
        alone_q = mu_p.clone()  # the other items: KL 0 -> free, not searched
        alone_q[i] = mu_q[i]
        c1, e1, _ = rcc.encode_step(alone_q, mu_p, vq, vp, seed=4, step=6, cfg=cfg, generator=torch.Generator())
        assert c1.num_chunks[i] == code.num_chunks[i] and np.array_equal(c1.indices[i], code.indices[i])
        assert torch.equal(e1[i], eps[i])


def _spike_model(dim, c0, scale, spike):
    """Count model 1's closed form: mass ``spike`` on c0, the two-sided geometric with mean deviation ``scale``
    (without its centre) on the rest, and the uniform floor 2^-10 over [0, D]."""
    floor = 2.0**-10
    rho = scale / (scale + 1)
    g = np.array([0.0 if c == c0 else rho ** abs(c - c0) for c in range(dim + 1)])
    want = (1 - spike - floor) * g / g.sum() + floor / (dim + 1)
    want[c0] += spike
    return want


def test_count_spike_model_closed_form_and_code_length():
    """Count model 1: P(c0) = spike + floor/(D+1); elsewhere the geometric without its centre,
    scaled to 1 − spike − floor. A count equal to the centre costs −log2(0.8) ≈ 0.32 bits."""
    dim, c0 = 100, 40
    cfg = rcc.RCCConfig(chunk_bits=4, log2_candidates=14, selection="trellis", chunks_abs_scale=0.6,
                        chunks_rel_scale=0.03, count_spike=0.8)
    p = bitstream.chunk_count_probs(c0, dim, cfg)
    want = _spike_model(dim, c0, 0.6 + 0.03 * c0, 0.8)
    np.testing.assert_allclose(p, want, rtol=1e-12)
    assert abs(p.sum() - 1) < 1e-12
    # real code length of 400 centred counts in a range coder: ~0.32 bits each
    code = rcc.StepCode(num_chunks=np.full(400, 3, np.int64),
                        indices=[np.zeros(3, np.int64)] * 400, dim=dim)
    cfg_small = rcc.RCCConfig(chunk_bits=8, log2_candidates=12, count_spike=0.8)
    back, bits = _roundtrip(code, cfg_small, pred=3.2)
    assert np.array_equal(back.num_chunks, code.num_chunks)
    index_bits = bitstream.index_code_bits(np.zeros(3, np.int64), cfg_small) * 400
    count_bits = bits - index_bits
    assert abs(count_bits / 400 + math.log2(0.8)) < 0.05, count_bits / 400


def test_count_model_2_closed_form_where_one_segment_is_predicted():
    """Count model 2 at c0 = 1: P(0) = unit_zero + floor/(D+1), P(1) = unit_spike + floor/(D+1), C >= 2
    the geometric rho^(C-1) scaled to 1 - unit_zero - unit_spike - floor; so a free step costs
    -log2(0.5) = 1 bit, not the ~3.7 of count model 1. Elsewhere it is count model 1's shape."""
    dim = 60
    cfg = rcc.RCCConfig(chunk_bits=4, log2_candidates=14, selection="trellis", chunks_abs_scale=2.0,
                        chunks_rel_scale=0.05, count_spike=0.85, unit_zero=0.5, unit_spike=0.45)
    floor = 2.0**-10
    scale = 2.0 + 0.05
    rho = scale / (scale + 1)
    g = np.array([0.0, 0.0] + [rho ** (c - 1) for c in range(2, dim + 1)])
    want = (1 - 0.5 - 0.45 - floor) * g / g.sum() + floor / (dim + 1)
    want[0] += 0.5
    want[1] += 0.45
    p = bitstream.chunk_count_probs(1.2, dim, cfg)
    np.testing.assert_allclose(p, want, rtol=1e-12)
    assert abs(-math.log2(p[0]) - 1.0) < 0.01 and abs(p.sum() - 1) < 1e-12
    # at another centre the unit masses play no part: mass 0.85 on c0, none extra on 0
    c0 = 7
    np.testing.assert_allclose(bitstream.chunk_count_probs(c0, dim, cfg), _spike_model(dim, c0, 2.0 + 0.05 * c0, 0.85),
                               rtol=1e-12)
    # and counts coded under it round-trip through a range coder (c0 = 1 for every item)
    code = rcc.StepCode(num_chunks=np.array([0, 1, 0, 5, 1, 0], np.int64),
                        indices=[np.zeros(n, np.int64) for n in (0, 1, 0, 5, 1, 0)], dim=dim)
    back, _ = _roundtrip(code, cfg, pred=1.0)
    assert np.array_equal(back.num_chunks, code.num_chunks)
    with pytest.raises(ValueError, match="unit_zero"):
        rcc.RCCConfig(unit_zero=0.6, unit_spike=0.45)


def test_snap_chunks_window():
    cfg = rcc.RCCConfig(chunk_bits=4, log2_candidates=14, selection="trellis", count_spike=0.8,
                        snap_up=0.1, snap_down=0.05, snap_abs=2)
    nc = np.array([100, 100, 100, 100, 100, 3, 3, 0, 5, 50])
    pred = np.array([110.4, 110.6, 95.2, 94.6, 100.0, 5.0, 0.4, 2.0, 5.0, 4000.0])
    # 110 ≤ 100+10 snaps; 111 does not; 95 ≥ 100−5 snaps; 95 (94.6 rounds to 95) snaps;
    # 3 → 5 within the absolute window of 2; a centre of 0 and a free step (nc = 0) never move;
    # a centre beyond D never replaces a count
    got = rcc.snap_chunks(nc, pred, cfg, dim=3072)
    assert got.tolist() == [110, 100, 95, 95, 100, 5, 3, 0, 5, 50]
    # snap_free 1: a free step moves to a centre of 1 (and only 1: 2 segments would be 8 path bits)
    free = np.array([0, 0, 0, 0])
    free_pred = np.array([0.4, 0.6, 1.4, 1.6])
    assert rcc.snap_chunks(free, free_pred, cfg, dim=3072).tolist() == [0, 0, 0, 0]
    cfg1 = replace(cfg, snap_free=1)
    assert rcc.snap_chunks(free, free_pred, cfg1, dim=3072).tolist() == [0, 1, 1, 0]
    assert rcc.snap_chunks(nc, pred, cfg1, dim=3072).tolist() == [110, 100, 95, 95, 100, 5, 3, 0, 5, 50]


def test_spike_counts_round_trip_through_encode_step():
    """encode_step with a prediction sends the snapped count and the decoder gets the same ε."""
    cfg = rcc.RCCConfig(chunk_bits=4, log2_candidates=8, selection="trellis", rate_factor=1.05,
                        chunks_abs_scale=0.6, chunks_rel_scale=0.03, count_spike=0.8)
    mu_q, mu_p, vq, vp = _pair(3, 256, 80.0)
    exact = rcc.num_chunks_for(float(rcc.kl_bits(mu_q, mu_p, vq, vp)[0]), 256, cfg)
    pred = np.array([exact + 1.0, exact + 40.0, exact - 1.0])
    code, eps, _ = rcc.encode_step(mu_q, mu_p, vq, vp, seed=1, step=7, cfg=cfg,
                                   generator=torch.Generator().manual_seed(0), predicted_chunks=pred)
    nc = code.num_chunks
    assert nc[0] == exact + 1 and nc[2] == exact - 1 and abs(nc[1] - exact) <= 1
    back, _ = _roundtrip(code, cfg, pred)
    assert np.array_equal(back.num_chunks, nc)
    eps2 = rcc.decode_step(back, dim=256, seed=1, step=7, cfg=cfg)
    assert torch.equal(eps, eps2)


def test_index_table_fitting_writes_data_not_source(tmp_path):
    """legacy.fit_index_tables simulates PFR bucket counts; write_index_tables stores them as JSON data
    (the committed tables live in index_tables.json, never in a source file)."""
    import json

    from ddpm_codec.coding.rcc import legacy

    tables = legacy.fit_index_tables([(10, 14)], chunks_per_config=2000, seed=1)
    t = tables["10,14"]
    assert len(t) == 15 and min(t) >= 1 and abs(sum(t) - (1 << 16)) <= 15   # L + 1 buckets, scaled to 2^16
    # the simulated shape agrees with the committed one within sampling noise (2000 vs 6000 chunks)
    committed = np.array(bitstream.index_tables()["10,14"], float)
    assert np.abs(np.array(t[:-1]) / committed[:-1] - 1).max() < 0.35
    out = tmp_path / "tables.json"
    legacy.write_index_tables(tables, out)
    assert json.loads(out.read_text()) == {"10,14": t}
