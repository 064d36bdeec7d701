"""Training (Algorithm 1): single process or DistributedDataParallel under ``torchrun``.

Exact resume: a checkpoint holds the model, EMA, optimizer, step and every RNG state (data
order, flips, noise, dropout; per rank), so a resumed run continues bit-exactly on the same
hardware. Resumable checkpoints are ordinary ``torch.save`` dicts read with
``weights_only=True``; shipped models use safetensors (see ``ddpm_codec.models.checkpoint``).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from . import distributed
from .diffusion import GaussianDiffusion
from .errors import InputError
from .models.checkpoint import DEFAULT_DIFFUSION, save_model
from .models.unet import UNet, UNetConfig


@dataclass
class TrainConfig:
    steps: int = 800_000
    batch_size: int = 128               # global batch (split over ranks)
    lr: float = 2e-4
    warmup: int = 5000
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    loss: Literal["simple", "vlb"] = "simple"
    hflip: bool = True
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 1000
    sample_every: int = 0               # 0: never write sample grids
    eval_every: int = 0                 # 0: never evaluate on held-out images
    eval_images: int = 500
    eval_terms: int = 4                 # Monte-Carlo terms per held-out image (over t > eval_exact_tail)
    eval_exact_tail: int = 20           # terms t <= 20 always evaluated (the largest; see nll_bound)
    bf16: bool = True                   # autocast on CUDA only
    num_workers: int = 0
    time_limit: float = 0.0             # seconds of this run (0: none); stops cleanly with a checkpoint


def select_device(name: str | None = None) -> torch.device:
    """``cuda`` if available, else ``mps``, else ``cpu`` (or the named device)."""
    if name and name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        # one fused kernel per dtype group instead of two per tensor (launch-bound on GPU)
        torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)


def loss_fn(net, diffusion: GaussianDiffusion, x0: torch.Tensor, gen: torch.Generator, kind: str,
            device: torch.device, autocast: bool) -> torch.Tensor:
    """Algorithm 1: t ~ U{1..T}, eps ~ N(0, I), || eps - eps_theta(x_t, t) ||^2 (``simple``), or the
    bound's term L_{t-1} in bits/dim for that t (``vlb``; L_0 at t = 1), fixedlarge variance."""
    b = x0.shape[0]
    t = torch.randint(1, diffusion.num_timesteps + 1, (b,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    x0, noise, t_dev = x0.to(device), noise.to(device), t.to(device)
    xt = diffusion.q_sample(x0, t_dev, noise)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
        eps = net(xt, t_dev)
    eps = eps.float()
    if kind == "simple":
        return ((eps - noise) ** 2).mean()
    if kind == "vlb":
        dims = x0[0].numel()
        # a float32 version of the per-term bound so gradients flow
        x0_hat = (xt - _g(diffusion.sqrt_one_minus_alphas_cumprod, t_dev, xt) * eps) / _g(diffusion.sqrt_alphas_cumprod, t_dev, xt)
        c0, _, _ = diffusion.posterior_coefs(t_dev, t_dev - 1, xt)
        var_p = diffusion.p_variance(t_dev, t_dev - 1, "fixedlarge", xt).float()
        kl = (c0.float() ** 2 * (x0 - x0_hat) ** 2 / (2 * var_p)).flatten(1).sum(1)   # mean part of the KL
        from .diffusion import discretized_gaussian_log_likelihood
        nll0 = -discretized_gaussian_log_likelihood(x0, means=x0_hat, scales=torch.sqrt(var_p)).flatten(1).sum(1).float()
        per = torch.where(t_dev == 1, nll0, kl)
        return (per / (dims * math.log(2))).mean() * diffusion.num_timesteps / 1000.0
    raise InputError(f"unknown loss {kind!r}; expected 'simple' or 'vlb'")


def _g(arr, t, like):
    return torch.as_tensor(arr, dtype=torch.float32, device=like.device)[t].reshape(-1, 1, 1, 1)


class Trainer:
    """Holds model, EMA, optimizer and RNG; ``run()`` trains to ``cfg.steps``."""

    def __init__(self, unet_config: UNetConfig, images: np.ndarray, run_dir: str | Path, cfg: TrainConfig,
                 *, device: torch.device | str | None = None, eval_images: np.ndarray | None = None,
                 diffusion_config: dict | None = None, progress: bool = True, card: dict | None = None):
        self.device = select_device(device) if not isinstance(device, torch.device) else device
        self.distributed = distributed.init(device=self.device)   # NCCL on GPU, gloo on CPU
        self.rank, self.world = distributed.rank_world()
        if cfg.batch_size % self.world:
            raise InputError(f"batch size {cfg.batch_size} is not divisible by {self.world} processes")
        self.cfg, self.unet_config, self.run_dir = cfg, unet_config, Path(run_dir)
        self.diffusion_config = dict(diffusion_config or DEFAULT_DIFFUSION)
        self.diffusion = GaussianDiffusion.from_config(self.diffusion_config)
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
        self.eval_images = eval_images
        self.progress = progress and self.rank == 0
        self.card = card or {}
        torch.manual_seed(cfg.seed)              # same init on every rank
        self.model = UNet(unet_config).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.ddp = self.model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.ddp = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.gen = torch.Generator().manual_seed(cfg.seed)            # data order, flips, t, noise (shared)
        torch.manual_seed(cfg.seed * 1000 + 1 + self.rank)            # dropout (per rank)
        self.step = 0
        self.best_eval = math.inf
        self.history: list[dict] = []

    # ---------------------------------------------------------------- checkpoints
    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def _gather_rng(self):
        state = torch.get_rng_state()
        if not self.distributed:
            return [state]
        import torch.distributed as dist
        out = [None] * self.world
        dist.all_gather_object(out, state)
        return out

    def save_checkpoint(self):
        rng = self._gather_rng()
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                 "step": torch.tensor(self.step), "gen": self.gen.get_state(), "rng": rng,
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                 "best_eval": torch.tensor(self.best_eval),
                 "meta": json.dumps({"unet": self.unet_config.to_dict(), "train": asdict(self.cfg),
                                     "diffusion": self.diffusion_config, "history": self.history})}
        tmp = self.ckpt_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.ckpt_path)

    def load_checkpoint(self, path: str | Path | None = None) -> bool:
        path = Path(path) if path else self.ckpt_path
        if not path.exists():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(state["meta"])
        if meta["unet"] != self.unet_config.to_dict():
            raise InputError(f"{path} was trained with a different U-Net config: {meta['unet']}")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])
        self.gen.set_state(state["gen"])
        rng = state["rng"]
        torch.set_rng_state(rng[self.rank] if self.rank < len(rng) else rng[0])
        if torch.cuda.is_available() and state.get("cuda_rng"):
            try:
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            except RuntimeError:
                pass
        self.best_eval = float(state.get("best_eval", torch.tensor(math.inf)))
        old = meta.get("train", {})
        if (old.get("eval_terms"), old.get("eval_exact_tail", 0), old.get("eval_images")) != \
                (self.cfg.eval_terms, self.cfg.eval_exact_tail, self.cfg.eval_images):
            self.best_eval = math.inf   # another estimator: its numbers are not comparable
        self.history = meta.get("history", [])
        return True

    def export(self, name: str = "ema", dtype=torch.float32, extra: dict | None = None) -> Path:
        """Write the EMA weights as a shipped-style model (safetensors + JSON)."""
        config = {"diffusion": self.diffusion_config, "card": {**self.card, "train": asdict(self.cfg),
                                                                "step": self.step, **(extra or {})}}
        return save_model(self.run_dir / f"{name}.safetensors", self.ema, config, dtype=dtype)

    # ---------------------------------------------------------------- steps
    def _batch(self) -> torch.Tensor:
        b = self.cfg.batch_size
        idx = torch.randint(len(self.images), (b,), generator=self.gen)
        x = self.images[idx].float() / 127.5 - 1.0
        if self.cfg.hflip:
            flip = torch.rand(b, generator=self.gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        per = b // self.world
        return x[self.rank * per:(self.rank + 1) * per]

    def train_step(self) -> float:
        """One optimisation step; returns the batch loss."""
        return float(self._step())

    def _step(self) -> torch.Tensor:
        cfg = self.cfg
        self.model.train()
        x0 = self._batch()
        # the per-rank slice of the shared generator's noise: draw the global batch, keep ours
        gen_state = self.gen.get_state()
        loss = loss_fn(self.ddp, self.diffusion, x0, self._rank_gen(), cfg.loss, self.device,
                       autocast=cfg.bf16 and self.device.type == "cuda")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        lr = cfg.lr * min(1.0, (self.step + 1) / max(cfg.warmup, 1))
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        self.step += 1
        decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))
        ema_update(self.ema, self.model, decay)
        del gen_state
        return loss.detach()          # a tensor: reading it would wait for the GPU every step

    def _rank_gen(self) -> torch.Generator:
        # one generator per step and rank, derived from the shared stream: deterministic, resumable
        seed = int(torch.randint(2 ** 62, (1,), generator=self.gen)) + self.rank
        return torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Monte-Carlo bits/dim bound of the EMA model on held-out images (fixed draws)."""
        from .likelihood import nll_bound

        x = torch.from_numpy(self.eval_images[: self.cfg.eval_images]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        rep = nll_bound(lambda xt, t: self.ema(xt.to(self.device), t.to(self.device)).float().cpu(),
                        self.diffusion, x, mc_samples=self.cfg.eval_terms, exact_tail=self.cfg.eval_exact_tail,
                        generator=torch.Generator().manual_seed(1234))
        return float(rep.total.mean())

    @torch.no_grad()
    def write_samples(self):
        from .sample import sample_images
        from .eval.plots import save_image_grid

        imgs = sample_images(self.ema, self.diffusion, 16, image_size=self.unet_config.image_size,
                             steps=100, seed=0, device=self.device)
        save_image_grid(imgs.reshape(4, 4, *imgs.shape[1:]), self.run_dir / f"samples-{self.step:07d}.png")

    def run(self) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True)
        t0, n0, avg = time.time(), self.step, None
        while self.step < cfg.steps:
            loss = self._step()
            avg = loss if avg is None else 0.98 * avg + 0.02 * loss
            bar.update(1)
            out_of_time = cfg.time_limit > 0 and time.time() - t0 >= cfg.time_limit
            if self.step % cfg.log_every == 0:
                rate = (self.step - n0) / max(time.time() - t0, 1e-9)
                bar.set_postfix(loss=f"{float(avg):.4f}", its=f"{rate:.2f}")
                self.history.append({"step": self.step, "loss": float(avg), "it_s": rate, "time": time.time()})
            if cfg.eval_every and self.eval_images is not None and self.step % cfg.eval_every == 0 and self.rank == 0:
                bpd = self.evaluate()
                self.history.append({"step": self.step, "eval_bpd": bpd})
                bar.write(f"step {self.step}: held-out bound {bpd:.4f} bits/dim (MC, {cfg.eval_terms} terms/image"
                          f" + the last {cfg.eval_exact_tail} exactly)")
                if bpd < self.best_eval:
                    self.best_eval = bpd
                    self.export("best", extra={"eval_bpd_mc": bpd})
            if cfg.sample_every and self.step % cfg.sample_every == 0 and self.rank == 0:
                self.write_samples()
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps or out_of_time:
                self.save_checkpoint()
            if out_of_time:
                bar.write(f"time limit of {cfg.time_limit:g} s reached at step {self.step}; checkpoint saved")
                break
        bar.close()
        if self.rank == 0:
            self.export("ema")
        return {"step": self.step, "best_eval": self.best_eval}
