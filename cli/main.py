"""The ``ddpm-codec`` command: click commands, thin over the library."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

DEFAULT_DATA_HELP = "an .npz (e.g. ../shared/data/cifar10-subset.npz), a CIFAR-10 archive/folder, or an image folder"


class CliError(click.ClickException):
    pass


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ddpm-codec")
def main():
    """ddpm-codec: a progressive, lossless-capable image codec built on a DDPM (Ho et al. 2020).

    Train a model, sample from it, measure its likelihood, and encode/decode images with real
    bits (reverse channel coding of x_T..x_tau, then x_0 losslessly).
    """


# --------------------------------------------------------------------------- train
@main.command()
@click.option("--data", "data", required=True, help=f"Training images: {DEFAULT_DATA_HELP}, or 'cifar10'.")
@click.option("--split", default="train", show_default=True, help="Split to read from .npz / CIFAR data.")
@click.option("--eval-data", default=None, help="Held-out images for the periodic bound (default: the test split of --data).")
@click.option("--download", is_flag=True, help="Download the official CIFAR-10 archive (with --data cifar10).")
@click.option("--preset", default="cpu-small", show_default=True, help="U-Net size (see `ddpm-codec presets`).")
@click.option("--dropout", type=float, default=None, help="Override the preset's dropout.")
@click.option("--run-dir", type=click.Path(file_okay=False), required=True, help="Checkpoints, samples and exported weights go here.")
@click.option("--steps", type=int, default=800_000, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True, help="Global batch (split across torchrun processes).")
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--warmup", type=int, default=5000, show_default=True)
@click.option("--ema", "ema_decay", type=float, default=0.9999, show_default=True)
@click.option("--loss", type=click.Choice(["simple", "vlb"]), default="simple", show_default=True,
              help="L_simple (Eq. 14) or the true bound L.")
@click.option("--no-flip", is_flag=True, help="Disable random horizontal flips.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--ckpt-every", type=int, default=1000, show_default=True)
@click.option("--eval-every", type=int, default=0, show_default=True, help="Held-out MC bound every N steps (0: never).")
@click.option("--eval-images", type=int, default=500, show_default=True)
@click.option("--sample-every", type=int, default=0, show_default=True, help="Write a sample grid every N steps (0: never).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps.")
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
@click.option("--no-resume", is_flag=True, help="Start fresh even if RUN_DIR has a checkpoint.")
@click.option("--time-limit", type=float, default=0, show_default=True,
              help="Stop after this many minutes with a checkpoint and exported weights (0: run to --steps).")
def train(data, split, eval_data, download, preset, dropout, run_dir, steps, batch_size, lr, warmup, ema_decay,
          loss, no_flip, seed, ckpt_every, eval_every, eval_images, sample_every, device, threads, no_resume,
          time_limit):
    """Train a DDPM (Algorithm 1). Resumes RUN_DIR/checkpoint.pt exactly; run under
    `torchrun --nproc_per_node N` for several GPUs (NCCL) or CPU processes (gloo)."""
    import torch

    from ddpm_codec.data import load_images
    from ddpm_codec.models.presets import get_preset
    from ddpm_codec.train import TrainConfig, Trainer

    if threads:
        torch.set_num_threads(threads)
    try:
        images = load_images(data, split, download=download)
        held = None
        if eval_every:
            held = load_images(eval_data, "test") if eval_data else load_images(data, "test", download=download)
        ucfg = get_preset(preset, dropout=dropout)
    except _errors() as e:
        raise CliError(str(e)) from None
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, ema_decay=ema_decay, loss=loss,
                      hflip=not no_flip, seed=seed, ckpt_every=ckpt_every, eval_every=eval_every,
                      eval_images=eval_images, sample_every=sample_every, time_limit=60 * time_limit)
    trainer = Trainer(ucfg, images, run_dir, cfg, device=device, eval_images=held,
                      card={"preset": preset, "data": str(data), "num_train_images": int(len(images))})
    if not no_resume and trainer.load_checkpoint():
        click.echo(f"resumed from {trainer.ckpt_path} at step {trainer.step}", err=True)
    click.echo(f"training {preset} on {len(images)} images, device {trainer.device}, "
               f"{trainer.world} process(es)", err=True)
    result = trainer.run()
    if trainer.rank == 0:
        click.echo(f"done at step {result['step']}; EMA weights: {Path(run_dir) / 'ema.safetensors'}")
    if trainer.distributed:
        import torch.distributed as dist
        dist.destroy_process_group()


@main.command()
def presets():
    """List the U-Net presets with their parameter counts."""
    from ddpm_codec.models.presets import PRESETS
    from ddpm_codec.models.unet import UNet, count_parameters

    for name, cfg in PRESETS.items():
        n = count_parameters(UNet(cfg))
        click.echo(f"{name:14s} {n / 1e6:7.2f}M  ch={cfg.ch} mult={','.join(map(str, cfg.ch_mult))} "
                   f"blocks={cfg.num_res_blocks} attn={','.join(map(str, cfg.attn_resolutions))} dropout={cfg.dropout}")


# --------------------------------------------------------------------------- models, sampling, likelihood
def _model_option(fn):
    return click.option("--model", "model_spec", default=None,
                        help="A shipped model name (see `ddpm-codec models`), a path to a trained model "
                             "(.safetensors with its .json), or a diffusers DDPM folder (google/ddpm-cifar10-32 "
                             "layout; see `ddpm-codec import`). Default: the shipped default model.")(fn)


def _device_option(fn):
    return click.option("--device", default="cpu", show_default=True,
                        help="Where the network runs (cpu, cuda, mps, auto). Encode files you keep on cpu: "
                             "a GPU-encoded file failed to decode in a second process in our H200 test.")(fn)


def _workers_option(fn):
    return click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                        help="Processes on this machine (torch.distributed, gloo), each coding its share of the "
                             "images; rank 0 writes the results, the same as one process's. Each uses "
                             "cores/workers threads. On several machines use torchrun instead "
                             "(docs/USAGE.md).")(fn)


def _batch_option(fn):
    return click.option("--batch", type=click.IntRange(min=1), default=None,
                        help="Tiles coded at a time in each process (32x32 images: this many images), their "
                             "network calls batched, in one lane per thread side by side: the same files. "
                             "Default: 16 in one process (1.4x the images/s on 2 cores), 1 when several ranks "
                             "share a machine (no gain there, and ~2.5 GB a rank at 16). 1: one at a time.")(fn)


def _batch(batch: int | None) -> int:
    """``--batch``'s value, or its default for this process (see :func:`_batch_option`)."""
    import os

    if batch is not None:
        return batch
    return 16 if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) <= 1 else 1


def _launch(workers: int) -> bool:
    """In a torchrun/--workers launch: join the process group (gloo) and return False (do the work).
    Else with ``workers > 1``: run this command in that many processes and return True (done)."""
    from ddpm_codec import distributed

    if distributed.launched():
        distributed.init(backend="gloo")
        return False
    if workers <= 1:
        return False
    try:
        distributed.launch_workers(workers)
    except _errors() as e:
        raise CliError(str(e)) from None
    return True


def _load_data_in_turn(load, rank0: bool):
    """``load()`` on rank 0 first (a download happens once), then on the other ranks."""
    from ddpm_codec import distributed

    if not rank0:
        distributed.broadcast(None)
    out = load()
    if rank0:
        distributed.broadcast(None)
    return out


def _is_rank0() -> bool:
    from ddpm_codec import distributed

    return distributed.rank_world()[0] == 0


def _load(model_spec, device="cpu"):
    from ddpm_codec.models.registry import resolve_model
    from ddpm_codec.train import select_device

    try:
        return resolve_model(model_spec, device=select_device(device))
    except _errors() as e:
        raise CliError(str(e)) from None


def _model_for_file(data: bytes, model_spec, device):
    """The model ``--model`` names, else the one the file's fingerprint names (else the default)."""
    if model_spec is not None:
        return _load(model_spec, device)
    from ddpm_codec import codec
    from ddpm_codec.codec.api import model_fits_file
    from ddpm_codec.models.registry import find_by_fingerprint
    from ddpm_codec.train import select_device

    try:
        parsed, settings = codec.read_header(data)
        fp = parsed.file.header.fingerprint.hex()
        return find_by_fingerprint(fp, device=select_device(device),
                                   accept=lambda m: model_fits_file(parsed, settings, m)) or _load(None, device)
    except _errors() as e:
        raise CliError(str(e)) from None


@main.command()
def profiles():
    """List the built-in coding profiles (* = the default); measured figures: docs/PROFILES.md."""
    from ddpm_codec.codec import DEFAULT_PROFILE, PROFILE_INFO

    for pid, p in PROFILE_INFO.items():
        s = p.settings
        coder = (f"trellis 2^{s.rcc_config().state_bits} states" if s.selection == "trellis"
                 else f"{s.selection} {s.chunk_bits}-bit chunks")
        x0 = (f"x0 +{s.x0_side_bits_per_tile()} bits/tile" if s.x0_side_bits_per_tile()
              else "x0 context model" if s.x0_context else "x0 plain")
        star = "*" if pid == DEFAULT_PROFILE else " "
        width = max(len(q.name) for q in PROFILE_INFO.values())
        click.echo(f"{star} {pid:2d} {p.name:{width}s} {coder:22s} {x0:18s} {p.summary}")


@main.command()
def models():
    """List the shipped models with their test bits/dim."""
    from ddpm_codec.models.registry import DEFAULT_MODEL, shipped_models

    ms = shipped_models()
    if not ms:
        click.echo("no shipped models found")
    for m in ms:
        bpd = f"{m.test_bpd:.3f} bits/dim" if m.test_bpd is not None else "n/a"
        star = "*" if m.name == DEFAULT_MODEL else " "
        ctx = f" (with its x0 context model: {m.context_fingerprint[:8]})" if m.context_fingerprint else ""
        click.echo(f"{star} {m.name:22s} preset={m.preset:12s} test NLL {bpd:16s} fp={m.fingerprint[:8]}{ctx}  "
                   f"{m.description}")


@main.command()
@_model_option
@click.option("-n", "num", type=int, default=64, show_default=True, help="Number of samples.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="samples.png", show_default=True)
@click.option("--steps", type=int, default=None, help="Sample on K respaced steps (default: all T).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--progressive", is_flag=True, help="Also write x_hat_0 over time (rows = samples, columns = time), "
                                                  "as the paper's Fig. 6, to OUTPUT with suffix -progressive.")
@click.option("--columns", type=int, default=10, show_default=True, help="Time points in the progressive strip.")
@click.option("--variance", type=click.Choice(["fixedlarge", "fixedsmall"]), default="fixedlarge", show_default=True)
@_device_option
def sample(model_spec, num, output, steps, seed, progressive, columns, variance, device):
    """Draw samples (Algorithm 2) and write them as a grid PNG."""
    from ddpm_codec.eval.plots import save_image_grid, square_grid
    from ddpm_codec.sample import sample_images

    model = _load(model_spec, device)
    res = sample_images(model.net, model.diffusion, num, image_size=model.image_size, steps=steps, seed=seed,
                        device=model.device, variance=variance, progressive=columns if progressive else 0,
                        progress=True)
    imgs = res[0] if progressive else res
    if num == 1:   # one sample: the image itself, no grid border (e.g. to encode it)
        from ddpm_codec.imageio import write_image

        try:
            write_image(output, imgs[0])
        except _errors() as e:
            raise CliError(str(e)) from None
    else:
        save_image_grid(square_grid(imgs), output)
    click.echo(f"wrote {output}")
    if progressive:
        out2 = str(Path(output).with_name(Path(output).stem + "-progressive" + Path(output).suffix))
        save_image_grid(res[1], out2)
        click.echo(f"wrote {out2}")


@main.command()
@click.argument("data")
@click.option("--split", default="test", show_default=True)
@_model_option
@click.option("-n", "num", type=int, default=None, help="Use N images (the first N after --start).")
@click.option("--start", type=int, default=0, show_default=True, help="Skip the first images (split a run over processes).")
@click.option("--save", "save_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the per-image terms (bits/dim) to this .npz.")
@click.option("--steps", type=int, default=None, help="Bound of a respaced chain of S Gaussian steps (the codec's rate).")
@click.option("--t-end", type=int, default=1, show_default=True, help="Last time of the respaced chain (x_0 decoded from it).")
@click.option("--spacing", type=click.Choice(["quadratic", "uniform", "cubic"]), default="quadratic", show_default=True)
@click.option("--variance", type=click.Choice(["fixedlarge", "fixedsmall", "fitted"]), default="fixedlarge", show_default=True)
@click.option("--mc", type=int, default=None, help="Unbiased Monte-Carlo estimate with this many terms per image.")
@click.option("--exact-tail", type=int, default=20, show_default=True,
              help="With --mc: always evaluate the last (small-t, largest) terms exactly; sample the rest.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per network batch (each batch draws its noise from a seed of its own position).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--download", is_flag=True)
@_workers_option
@_device_option
def nll(data, split, model_spec, num, start, save_path, steps, t_end, spacing, variance, mc, exact_tail, batch_size, seed,
        download, workers, device):
    """Variational bound in bits/dim on DATA: L_T, rate (sum of the KL terms), distortion L_0, total.

    DATA: an .npz, CIFAR-10 archive/folder, image folder, or 'cifar10'. Runs under torchrun or with
    --workers: the batches are shared out, rank 0 prints and saves (the numbers of one process)."""
    from tqdm.auto import tqdm

    from ddpm_codec import distributed
    from ddpm_codec.data import load_images_or_sample, to_model_range
    from ddpm_codec.diffusion import respaced_timesteps
    from ddpm_codec.likelihood import BoundReport, nll_bound

    if steps is None and t_end != 1:
        raise CliError("--t-end needs --steps")
    if _launch(workers):
        return
    rank0 = _is_rank0()
    model = _load(model_spec, distributed.local_device(device))
    try:
        images, note = _load_data_in_turn(lambda: load_images_or_sample(data, split, download=download), rank0)
        if note and rank0:
            click.echo(f"note: {note}", err=True)
        ts = None if steps is None else respaced_timesteps(steps, model.diffusion.num_timesteps, kind=spacing, t_end=t_end)
        images = images[start:start + num] if num else images[start:]
        if not len(images):
            raise CliError(f"no images left after --start {start}")
        if images.shape[1:3] != (model.image_size, model.image_size):
            raise CliError(f"images are {images.shape[2]}x{images.shape[1]}, the model is {model.image_size}x{model.image_size}")
        x0, eps = to_model_range(images), model.eval_eps()
        parts: list = []
        bar = tqdm(total=len(images), unit="img", desc="bound", disable=not rank0)

        def work(batches):   # this rank's batch of the round (one)
            return [nll_bound(eps, model.diffusion, x0[k * batch_size:(k + 1) * batch_size], timesteps=ts,
                              variance=variance, mc_samples=mc, exact_tail=exact_tail, batch_size=batch_size,
                              seed=seed, first_image=start + k * batch_size) for k in batches]

        num_batches = -(-len(images) // batch_size)
        distributed.map_rounds(num_batches, 0, work, 1, parts.extend,
                               lambda k: bar.update(min(len(images), bar.n + k * batch_size) - bar.n))
        bar.close()
    except _errors() as e:
        raise CliError(str(e)) from None
    finally:
        distributed.finish()
    if not rank0:
        return
    rep = BoundReport.concat(parts)
    s = rep.summary()
    how = f"MC {mc} terms/image + the last {exact_tail} exactly" if mc else "exact over all terms"
    click.echo(f"model {model.name} ({model.fingerprint[:8]}), {s['num_images']} images, chain of {s['num_steps']} "
               f"steps ending at t={rep.timesteps[-1]}, variance {variance}, {how}")
    click.echo("| L_T | rate (sum L_t) | L_0 | total (bits/dim) |\n|---|---|---|---|")
    click.echo(f"| {s['L_T']:.5f} | {s['rate']:.4f} | {s['L_0']:.4f} | {s['total']:.4f} |")
    if save_path:
        rep.save(save_path, first_image=start, fingerprint=model.fingerprint, variance=variance)
        click.echo(f"wrote {save_path}")


@main.command()
@click.option("--data", required=True, help=f"Training images: {DEFAULT_DATA_HELP}.")
@click.option("--split", default="train", show_default=True)
@_model_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the calibrated model (.safetensors; its .json beside it).")
@click.option("-n", "num", type=int, default=1000, show_default=True, help="Images used for the fit.")
@click.option("--half", is_flag=True, help="Round the weights to float16 first (fit and save what ships).")
@_device_option
def calibrate(data, split, model_spec, output, num, half, device):
    """Fit the per-time error of x_hat_0 on training images and save the model with it.

    The statistics give the codec's KL-optimal ('fitted') variances, the scale of the direct x_0
    decoder, and the expected chunk counts; they change the model's fingerprint."""
    import torch

    from ddpm_codec.data import load_images, to_model_range
    from ddpm_codec.likelihood import fit_x0_stats
    from ddpm_codec.models.checkpoint import round_weights_to_half, save_model, with_stats

    model = _load(model_spec, device)
    try:
        images = load_images(data, split)[:num]
    except _errors() as e:
        raise CliError(str(e)) from None
    if half:
        round_weights_to_half(model.net)
    st = fit_x0_stats(model.eval_eps(), model.diffusion, to_model_range(images), progress=True)
    mse = st.mse
    cal = with_stats(model, st.mse, st.shrink, st.data_mean)
    dtype = torch.float16 if half or model.config.get("weights_dtype") == "float16" else torch.float32
    path = save_model(output, cal.net, cal.config, dtype=dtype)
    click.echo(f"wrote {path} (x0 RMSE at t=1: {mse[1] ** 0.5 * 127.5:.3f}/255, t=10: {mse[10] ** 0.5 * 127.5:.3f}/255)")


@main.command("import")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the converted model (NAME.safetensors; NAME.json beside it).")
def import_model(folder, output):
    """Convert a diffusers DDPM folder (e.g. google/ddpm-cifar10-32: config.json, weights and
    scheduler_config.json at the top, or unet/ + scheduler/) into this project's model format,
    with a fingerprint. Then run `calibrate` on it before encoding."""
    from ddpm_codec.models.diffusers_import import import_diffusers

    try:
        path, fp = import_diffusers(folder, output)
    except _errors() as e:
        raise CliError(str(e)) from None
    click.echo(f"wrote {path} (fingerprint {fp[:16]}); next: ddpm-codec calibrate --model {path} "
               f"--data IMAGES -o CALIBRATED.safetensors")


# --------------------------------------------------------------------------- the codec
def _errors() -> tuple[type[Exception], ...]:
    """What a command reports as a one-line error (exit 1): ddpm-codec's root :class:`ddpm_codec.Error`."""
    from ddpm_codec import Error

    return (Error,)


def _max_pixels_option(fn):
    from ddpm_codec.codec.tiles import MAX_CODEC_PIXELS

    return click.option("--max-pixels", type=click.IntRange(min=1), default=MAX_CODEC_PIXELS, show_default=True,
                        help="Refuse larger images (height x width), checked on the size the file declares "
                             "before anything is allocated: memory grows ~2.5 KB a pixel to encode, ~0.4 KB to "
                             "decode. A file encoded above the default needs it on decode too.")(fn)


def _threads_option(fn):
    return click.option("--threads", type=click.IntRange(min=1), default=None,
                        help="Threads for exact-arithmetic files (profiles 10 and 12, the defaults; default: all "
                             "cores) and for the encoder's search (default: 1). Float profiles always run their "
                             "network on one thread (their float sums depend on it). The same file either way.")(fn)


def _reconstructions(ctx, param, value: str) -> tuple[str, ...]:
    """``--reconstruct`` callback: comma-separated modes, each one of the library's ``RECONSTRUCT_MODES``."""
    modes = tuple(m.strip() for m in value.split(",") if m.strip())
    if not modes:
        return ()
    from ddpm_codec.codec import RECONSTRUCT_MODES

    for m in modes:
        if m not in RECONSTRUCT_MODES:
            raise click.BadParameter(f"unknown reconstruction {m!r}; expected {', '.join(RECONSTRUCT_MODES)}")
    return modes


def _one_reconstruction(ctx, param, value: str) -> str:
    """``--reconstruct`` callback for one mode (click.Choice over the library's ``RECONSTRUCT_MODES``)."""
    from ddpm_codec.codec import RECONSTRUCT_MODES

    return click.Choice(RECONSTRUCT_MODES).convert(value, param, ctx)


def _schedule_options(f):
    """The coding-schedule overrides shared by encode and rd-curve, passed on as ``schedule``."""
    opts = [
        click.option("--profile", default=None,
                     help="A built-in profile, by id or name (see `ddpm-codec profiles`; default: 11, or 9 for "
                          "a model without an x0 context model); the options below override its values."),
        click.option("--coding-steps", "num_steps", type=int, default=None,
                     help="Gaussian coding steps in the chain (default: the profile's)."),
        click.option("--t-end", type=int, default=None, help="Last time of the chain; x_0 is coded from x_t_end."),
        click.option("--spacing", "schedule_kind", type=click.Choice(["quadratic", "uniform", "cubic"]), default=None,
                     help="Spacing of the chain's times (denser near t_end from uniform to cubic)."),
        click.option("--coder", "selection", type=click.Choice(["trellis", "pfr", "mrc"]), default=None,
                     help="Reverse channel coder: trellis (Viterbi over a trellis codebook), pfr (Poisson "
                          "functional representation per chunk), mrc (minimal random coding, for comparison)."),
        click.option("--chunk-bits", type=int, default=None,
                     help="pfr/mrc: KL bits per chunk; trellis: path bits per segment."),
        click.option("--log2-candidates", "--candidates", "log2_candidates", type=int, default=None,
                     help="log2 of the candidates per chunk (trellis: state bits + path bits per segment)."),
        click.option("--rate-percent", type=int, default=None, help="trellis: bits sent per 100 bits of KL."),
        click.option("--reuse-bits", type=int, default=None,
                     help="trellis: 2^K times the states on the same candidate pool (0-8; the search's "
                          "recursion costs 2^K times, the pool the same)."),
        click.option("--variance", type=click.Choice(["fitted", "fixedsmall", "fixedlarge"]), default=None),
        click.option("--x0-model", default=None,
                     help="Lossless x0 per 32x32 tile: 'model' the model's decoder as is; 'scale' + a scale "
                          "factor (4 bits); 'channels' + G, B predicted from decoded R, G residuals (9 bits); "
                          "'neighbours' + the residuals above and left (54 bits more; profile 9); 'context' "
                          "the model's learned context model, 12 passes, no side information (profile 11)."),
    ]

    @functools.wraps(f)
    def wrapper(*args, profile, num_steps, t_end, schedule_kind, selection, chunk_bits, log2_candidates,
                rate_percent, reuse_bits, variance, x0_model, **kw):
        from ddpm_codec.simple import settings_for

        schedule = dict(profile=profile, num_steps=num_steps, t_end=t_end, schedule_kind=schedule_kind,
                        selection=selection, chunk_bits=chunk_bits, log2_candidates=log2_candidates,
                        rate_percent=rate_percent, reuse_bits=reuse_bits, variance=variance, x0_model=x0_model)
        try:
            settings_for(**schedule)   # valid before anything loads (checked again with the model)
        except _errors() as e:
            raise CliError(str(e)) from None
        return f(*args, schedule=schedule, **kw)

    for o in reversed(opts):
        wrapper = o(wrapper)
    return wrapper


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Output .ddpm file (default: IMAGE with suffix .ddpm), written whole or not at all; with "
                   "several images or a folder, the folder to write NAME.ddpm into (created if missing).")
@_model_option
@click.option("--steps", "max_steps", type=int, default=None,
              help="Lossy: stop exactly at reverse-process time N (t = T - N + 1; the paper's Table 4 axis).")
@click.option("--bpd", "max_bpd", type=float, default=None, help="Lossy: stop once the rate reaches R bits/dim.")
@click.option("--psnr", "min_psnr", type=float, default=None,
              help="Lossy: stop at the first step whose reconstruction (what decode shows) reaches this PSNR "
                   "in dB (lossless if none does).")
@_schedule_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--effort", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Encode with E seeds (--seed .. --seed+E-1) and keep the smallest file (with --bpd: the best "
                   "PSNR): E times the work; lossless files come out ~0.015 bits/dim (0.4 %) smaller at 4.")
@click.option("--quiet", "-q", is_flag=True, help="No per-step table.")
@click.option("--format", "format_version", type=click.IntRange(1, 5), default=None,
              help="File format version for older readers: by default 5 (docs/FORMAT.md: one fingerprint byte, "
                   "keyed checksums); 4 writes lossless files in 3 and lossy ones in 4 (read since 2026-12-07, "
                   "4 bytes more); 3, 2 or 1 stop --steps at the last schedule step <= N, and 2 and 1 cost 4-5 "
                   "bytes more again.")
@_max_pixels_option
@_threads_option
@_batch_option
@_workers_option
@_device_option
def encode(images, output, model_spec, max_steps, max_bpd, min_psnr, schedule, seed, effort, quiet, format_version,
           max_pixels, threads, batch, workers, device):
    """Encode IMAGES (PNG etc., or folders of them) to .ddpm files: lossless by default, lossy with
    --steps, --bpd or --psnr.

    One image: prints the paper's Table 4 with real bits: per coding step the reverse time T-t+1, the
    KL bound, the bits actually written, the cumulative bits/dim, and RMSE/PSNR of x_hat_0. Several:
    a progress bar over the files and one summary table. Every input is checked before anything is
    coded. Exit status: 0 done, 1 a refused input or file (one line, no output), 2 a usage error.
    Several images run under torchrun or with --workers: each process codes its share, rank 0
    writes every file (the same bytes as one process)."""
    from ddpm_codec.imageio import folder_images

    try:
        paths = folder_images(images)
    except _errors() as e:
        raise CliError(str(e)) from None
    if len(paths) > 1 or Path(images[0]).is_dir():
        if _launch(workers):
            return None
        return _encode_many(paths, output, model_spec, max_steps, max_bpd, min_psnr, schedule, seed, max_pixels,
                            device, threads, format_version, _batch(batch), effort)
    _encode_one(paths[0], output, model_spec, max_steps, max_bpd, min_psnr, schedule, seed, quiet, max_pixels,
                device, threads, format_version, effort)


def _encode_many(paths, output, model_spec, max_steps, max_bpd, min_psnr, schedule, seed, max_pixels, device,
                 threads=None, format_version=None, batch=1, effort=1):
    """``encode`` of several images: all read and checked first, then coded with one model load,
    ``batch`` at a time (batched network calls), shared out over the ranks of a launch."""
    from tqdm.auto import tqdm

    from ddpm_codec import codec, distributed
    from ddpm_codec.imageio import check_writable, make_folder, read_image, write_bytes_atomic
    from ddpm_codec.simple import settings_for

    rank0 = _is_rank0()
    made = None
    try:   # every input and output path first: a refused one leaves no output at all
        if output and Path(output).suffix == ".ddpm":
            raise CliError(f"with several images -o names a folder, not a file ({output})")
        outs = [(Path(output) if output else p.parent) / (p.stem + ".ddpm") for p in paths]
        if len(set(outs)) < len(outs):
            dup = next(o for o in outs if outs.count(o) > 1)
            raise CliError(f"two inputs would both be written to {dup}: give them different names")
        inputs = [read_image(p, max_pixels=max_pixels) for p in paths]
        if rank0:
            made = make_folder(output) if output else None
            for o in outs:
                check_writable(o)
    except _errors() as e:
        _remove_if_empty(made)
        raise CliError(str(e)) from None
    if rank0:
        for p, (_, notes) in zip(paths, inputs):
            for n in notes:
                click.echo(f"note: {p}: {n}", err=True)
    model = _load(model_spec, distributed.local_device(device))
    rows, total_bytes, total_dims, note = [], 0, 0, None
    try:
        from ddpm_codec.codec.describe import portability_note

        settings = settings_for(model=model, **schedule)
        kw = dict(settings=settings, max_reverse_time=max_steps, max_bpd=max_bpd, min_psnr=min_psnr, seed=seed,
                  max_pixels=max_pixels, threads=threads, format_version=format_version, effort=effort)

        def work(ids):   # this rank's images of the round: what rank 0 needs to write and report
            imgs = [inputs[i][0] for i in ids]
            res = codec.encode_many(imgs, model, batch=batch, **kw) if batch > 1 and len(ids) > 1 \
                else [codec.encode(img, model, **kw) for img in imgs]
            return [(i, r.data, r.lossless, r.steps[-1].reverse_time, r.num_dims, r.bits_per_dim, r.seconds)
                    for i, r in zip(ids, res)]

        def write(results):
            nonlocal total_bytes, total_dims, note
            for i, data, lossless, rt, dims, bpd, seconds in results:
                o, img = outs[i], inputs[i][0]
                write_bytes_atomic(o, data)
                note = note or portability_note(settings, lossless)
                kind = "lossless" if lossless else f"lossy, to {rt}"
                rows.append(f"| {o} | {img.shape[1]}x{img.shape[0]} | {len(data)} | {bpd:.4f} | {kind} | "
                            f"{seconds:.2f} |")
                total_bytes, total_dims = total_bytes + len(data), total_dims + dims

        with tqdm(total=len(paths), unit="image", desc="encoding", file=sys.stderr,
                  disable=None if rank0 else True) as bar:
            distributed.map_rounds(len(paths), 0, work, max(batch, distributed.ROUND_ITEMS), write, bar.update)
    except _errors() as e:
        _remove_if_empty(made)
        raise CliError(str(e)) from None
    finally:
        distributed.finish()
    if not rank0:
        return
    click.echo("| file | size | bytes | bits/dim | kind | seconds |\n|---|---|---|---|---|---|")
    click.echo("\n".join(rows))
    click.echo(f"wrote {len(rows)} files: {total_bytes} bytes, {8 * total_bytes / total_dims:.4f} bits/dim")
    if note:
        click.echo(f"note: {note}", err=True)


def _remove_if_empty(folder: Path | None) -> None:
    """Remove a folder this command created if nothing went into it."""
    if folder is not None and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _encode_one(image, output, model_spec, max_steps, max_bpd, min_psnr, schedule, seed, quiet, max_pixels, device,
                threads=None, format_version=None, effort=1):
    """``encode`` of one image, with its per-step table."""
    from ddpm_codec import codec
    from ddpm_codec.imageio import check_writable, read_image, write_bytes_atomic
    from ddpm_codec.simple import settings_for

    errors = _errors()
    out = Path(output) if output else Path(image).with_suffix(".ddpm")
    try:   # the input and the output path are checked before the model is loaded
        img, notes = read_image(image, max_pixels=max_pixels)
        check_writable(out)
    except errors as e:
        raise CliError(str(e)) from None
    for n in notes:
        click.echo(f"note: {n}", err=True)
    model = _load(model_spec, device)
    try:
        from tqdm.auto import tqdm

        from ddpm_codec.codec.describe import portability_note, step_table_header, step_table_row

        settings = settings_for(model=model, **schedule)   # default: the model's default profile

        live = not quiet and effort == 1   # the table as the steps go; with --effort, the kept file's after
        bar = tqdm(total=settings.num_steps * effort, unit="step", desc="encoding",
                   disable=True if live else None, file=sys.stderr)   # None: shown on a terminal only
        if not quiet:
            click.echo("\n".join(step_table_header()))

        def show(r):
            click.echo(step_table_row(r)) if live else bar.update(1)

        res = codec.encode(img, model, settings=settings, max_reverse_time=max_steps, max_bpd=max_bpd,
                           min_psnr=min_psnr, seed=seed, progress=show, max_pixels=max_pixels, threads=threads,
                           format_version=format_version, effort=effort)
        bar.close()
        if not quiet and not live:
            click.echo("\n".join(step_table_row(r) for r in res.steps))
        write_bytes_atomic(out, res.data)
    except errors as e:
        raise CliError(str(e)) from None
    kind = "lossless" if res.lossless else f"lossy (to reverse time {res.steps[-1].reverse_time})"
    if settings.x0_context and res.lossless:
        x0_line = f"with the x0 context model {res.adapted_code_length_bpd:.4f}"
    else:
        x0_line = f"adapted code length {res.adapted_code_length_bpd:.4f}"
    click.echo(f"wrote {out}: {len(res.data)} bytes, {res.bits_per_dim:.4f} bits/dim, {kind}; "
               f"model bound {res.model_bound_bpd:.4f}, {x0_line} bits/dim; {res.seconds:.2f} s "
               f"({res.network_seconds:.2f} s in the network)")
    if res.seeds_tried > 1:
        click.echo(f"kept seed {res.seed} of {res.seeds_tried} tried ({seed} to {seed + res.seeds_tried - 1})")
    note = portability_note(settings, res.lossless)
    if note:
        click.echo(f"note: {note}", err=True)


@main.command()
@click.argument("file", type=click.Path())
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Output image (default: FILE with suffix .png), written whole or not at all.")
@_model_option
@click.option("--steps", type=int, default=None, help="Use only the first N reverse-process steps (T - t + 1 <= N).")
@click.option("--reconstruct", default="denoise", show_default=True,
              callback=_one_reconstruction,
              help="From the last decoded x_t: x_hat_0 (denoise), a sample of p(x_0|x_t) (ancestral), or the "
                   "deterministic DDIM/flow decode (flow).")
@click.option("--progressive", "progressive_dir", type=click.Path(), default=None,
              help="Write the reconstruction after every decoded step into this folder (created if missing).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of 'ancestral' reconstructions.")
@_max_pixels_option
@_threads_option
@_device_option
def decode(file, output, model_spec, steps, reconstruct, progressive_dir, seed, max_pixels, threads, device):
    """Decode a .ddpm FILE to an image (exact for lossless files)."""
    from ddpm_codec import codec
    from ddpm_codec.codec.api import check_size
    from ddpm_codec.imageio import check_writable, image_format_for, make_folder, read_bytes, write_image

    errors = _errors()
    out = Path(output) if output else Path(file).with_suffix(".png")
    made_dir = None
    try:   # the file's header and the output paths are checked before the model is loaded
        data = read_bytes(file)
        parsed, _ = codec.read_header(data)
        check_size(parsed, max_pixels)
        image_format_for(out)
        check_writable(out)
        if progressive_dir:
            made_dir = make_folder(progressive_dir)
            check_writable(Path(progressive_dir) / "step-0000.png")
        model = _model_for_file(data, model_spec, device)
        from tqdm.auto import tqdm

        with tqdm(unit="step", desc="decoding", file=sys.stderr, disable=None) as bar:   # a terminal only
            res = codec.decode(data, model, steps=steps, reconstruct=reconstruct, seed=seed, max_pixels=max_pixels,
                               progressive=progressive_dir is not None, threads=threads,
                               on_step=lambda done, total: (setattr(bar, "total", total), bar.update(1)))
        write_image(out, res.image)
        if progressive_dir:
            for rt, im in res.progressive:
                write_image(Path(progressive_dir) / f"step-{rt:04d}.png", im)
    except (*errors, CliError) as e:
        _remove_if_empty(made_dir)   # nothing decoded: leave no empty folder behind
        raise e if isinstance(e, CliError) else CliError(str(e)) from None
    if res.truncated:
        click.echo(f"warning: {file} is truncated; decoded its {res.steps_decoded} complete steps", err=True)
    kind = "lossless (checksum verified)" if res.lossless else f"from reverse time {res.reverse_time} ({reconstruct})"
    click.echo(f"wrote {out}: {res.image.shape[1]}x{res.image.shape[0]}, {kind}; {res.seconds:.2f} s "
               f"({res.network_seconds:.2f} s in the network)")


@main.command()
@click.option("-o", "--output", type=click.Path(), default="example.png", show_default=True,
              help="Where to write the image (PNG, or another format by its suffix).")
@click.option("--index", type=int, default=7, show_default=True,
              help="Which image of the shipped sample: CIFAR-10 test image 0-99.")
def example(output, index):
    """Write an example image to code: a 32x32 CIFAR-10 test image shipped with the package
    (the shipped model never saw it)."""
    from ddpm_codec.data import SAMPLE_NAME, example_image
    from ddpm_codec.imageio import write_image

    try:
        write_image(output, example_image(index))
    except _errors() as e:
        raise CliError(str(e)) from None
    click.echo(f"wrote {output}: CIFAR-10 test image {index} (32x32) from {SAMPLE_NAME}")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--bits", is_flag=True, help="Also split the file's bits into framing fields, each step's chunk "
              "counts and indices, x0 and coder overhead (decodes the file: needs its model).")
@_model_option
@_threads_option
def info(file, bits, model_spec, threads):
    """Show a .ddpm file's header and per-segment sizes (with --bits: where every bit goes)."""
    from ddpm_codec.codec.describe import bit_lines, describe_file

    try:
        data = Path(file).read_bytes()
        lines = describe_file(data, file)
    except _errors() as e:
        raise CliError(str(e)) from None
    for line in lines:
        click.echo(line)
    if not bits:
        return
    from ddpm_codec import codec

    model = _model_for_file(data, model_spec, "cpu")
    try:
        res = codec.decode(data, model, threads=threads, account=True)
    except _errors() as e:
        raise CliError(str(e)) from None
    for line in bit_lines(res.accounting):
        click.echo(line)


# --------------------------------------------------------------------------- rd-curve
@main.command("rd-curve")
@click.argument("dataset", required=False)
@click.option("--data", "data_path", default=None,
              help="Where DATASET lives: for 'cifar10' the official archive/folder; else the dataset itself.")
@click.option("--split", default="test", show_default=True)
@click.option("-n", "num", type=int, default=100, show_default=True, help="Number of images (the first N).")
@_model_option
@click.option("-o", "--output", default="rd.h5", show_default=True, type=click.Path(dir_okay=False),
              help="HDF5 results (resumed if it exists).")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False), help="Write the plots here (PNG).")
@click.option("--reconstruct", "modes", default="", callback=_reconstructions,
              help="Also measure these reconstructions at the table rows, comma-separated (denoise, ancestral, "
                   "flow; e.g. flow,ancestral).")
@click.option("--theoretical", is_flag=True, help="KL-only mode (no candidate search), like the paper's evaluation.")
@click.option("--no-baselines", is_flag=True, help="Skip the classical codecs.")
@click.option("--from", "from_h5", default=None, type=click.Path(dir_okay=False, exists=True),
              help="Redraw the table and plots from an existing HDF5 without computing.")
@click.option("--download", is_flag=True)
@click.option("--format", "format_version", type=click.IntRange(1, 5), default=None,
              help="The files' format version, whose framing the rates count: default the codec's (as encode).")
@click.option("--effort", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Each image's file is the smallest of E seeds' (as encode --effort); the rows are its cuts.")
@_schedule_options
@_batch_option
@_workers_option
@_device_option
def rd_curve(dataset, data_path, split, num, model_spec, output, plot_path, modes, theoretical, no_baselines,
             from_h5, download, format_version, effort, schedule, batch, workers, device):
    """The paper's rate-distortion study (Fig. 5 / Table 4) with real bits, beside PNG, WebP,
    JPEG XL, JPEG, AVIF and JPEG 2000 on the same images.

    DATASET: 'cifar10' (the test split: --data PATH or --download for all 10,000 images; without
    either, the 100 shipped with the package), 'cifar10-sample', or a path (.npz, image folder).
    Runs under torchrun or with --workers: the images are shared out, rank 0 writes the HDF5."""
    from ddpm_codec import distributed
    from ddpm_codec.data import load_images_or_sample
    from ddpm_codec.eval import rd
    from ddpm_codec.simple import settings_for

    if from_h5:
        try:
            click.echo(rd.write_report(from_h5, plot_path))
        except _errors() as e:
            raise CliError(str(e)) from None
        return
    if not dataset:
        raise CliError("give a DATASET (cifar10, an .npz or a folder) or --from rd.h5")
    if _launch(workers):
        return
    rank0 = _is_rank0()
    spec = dataset
    if dataset == "cifar10" and data_path:
        spec = "cifar10:" + data_path
    elif data_path:
        spec = data_path
    model = _load(model_spec, distributed.local_device(device))
    try:
        images, note = _load_data_in_turn(lambda: load_images_or_sample(spec, split, download=download), rank0)
        if note:
            if rank0:
                click.echo(f"note: {note}", err=True)
            spec = "cifar10-sample"
        images = images[:num]
        if images.shape[1:3] != (model.image_size, model.image_size):
            raise CliError(f"rd-curve expects {model.image_size}x{model.image_size} images, got "
                           f"{images.shape[2]}x{images.shape[1]}")
        rd.run(images, model, output, settings=settings_for(model=model, **schedule), theoretical=theoretical,
               reconstruct=modes, dataset=str(spec), batch=_batch(batch), format_version=format_version,
               effort=effort)
        if rank0:
            if not no_baselines:
                rd.run_baselines(images, output)
            click.echo(rd.write_report(output, plot_path, images.shape[1:]))
    except _errors() as e:
        raise CliError(str(e)) from None
    finally:
        distributed.finish()


# --------------------------------------------------------------------------- archives (bits-back)
@main.command("archive")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="The archive (.ddpma), written whole or not at all.")
@_model_option
@click.option("--steps", "num_steps", type=click.IntRange(1, 65536), default=48, show_default=True,
              help="Latents of the chain x_T .. x_tau (more: fewer bits, more network time).")
@click.option("--grid-bits", type=click.IntRange(0, 10), default=4, show_default=True,
              help="Latent grid: 2^g to 2^(g+1) bins per std.")
@click.option("--chunk", "chunk_images", type=click.IntRange(1, 1 << 20), default=100, show_default=True,
              help="Images per independent chunk (extracting one image decodes part of its chunk; each "
                   "chunk pays its initial bits once).")
@click.option("--seed-images", type=click.IntRange(0, 255), default=3, show_default=True,
              help="Each chunk's first images as per-image files (exact profile 13) at the bottom of its stack: "
                   "the next images' initial bits (0: pseudo-random words, which cost their bits).")
@click.option("--split", default="test", show_default=True, help="Which array of an .npz input (<split>_images).")
@_max_pixels_option
def archive_cmd(images, output, model_spec, num_steps, grid_bits, chunk_images, seed_images, split, max_pixels):
    """Code IMAGES (files, folders of images, .npz arrays) losslessly into one archive by bits-back
    coding over the model's chain (portable: exact arithmetic). Names and sizes are kept."""
    from tqdm.auto import tqdm

    from ddpm_codec.codec import archive as ar
    from ddpm_codec.imageio import check_writable, write_bytes_atomic

    try:
        settings = ar.ArchiveSettings(num_steps=num_steps, grid_bits=grid_bits, chunk_images=chunk_images,
                                      seed_images=seed_images)
        notes: list[str] = []
        items = ar.collect_images(images, split=split, max_pixels=max_pixels, notes=notes)
        check_writable(output)
    except _errors() as e:
        raise CliError(str(e)) from None
    for n in notes:
        click.echo(f"note: {n}", err=True)
    model = _load(model_spec)
    try:
        with tqdm(total=len(items), unit="image", desc="archiving", file=sys.stderr, disable=None) as bar:
            res = ar.archive(items, model, settings=settings, max_pixels=max_pixels, progress=lambda s: bar.update(1))
        write_bytes_atomic(output, res.data)
    except _errors() as e:
        raise CliError(str(e)) from None
    click.echo(f"wrote {output}: {len(items)} images, {len(res.data)} bytes, {res.bits_per_dim:.4f} bits/dim; "
               f"{res.seconds:.1f} s ({res.network_seconds:.1f} s in the network)")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Folder to write the images into (PNG; created if missing).")
@click.option("--list", "list_only", is_flag=True, help="List the names, sizes and chunks; decode nothing.")
@click.option("--only", multiple=True, help="Extract only this image (repeatable): decodes its chunk only.")
@_model_option
@_max_pixels_option
def extract(file, output, list_only, only, model_spec, max_pixels):
    """Extract the images of an archive made by `ddpm-codec archive` (bit-exact, checksums verified).
    A damaged chunk loses its images only: the rest are written and the damage is reported (exit 1)."""
    from tqdm.auto import tqdm

    from ddpm_codec.codec import archive as ar
    from ddpm_codec.imageio import check_writable, make_folder, read_bytes, write_image

    try:
        data = read_bytes(file)
        index = ar.read_index(data)
    except _errors() as e:
        raise CliError(str(e)) from None
    if list_only:
        s = index.settings
        click.echo(f"{len(index.images)} images in {len(index.chunks)} chunks of up to {s.chunk_images}; "
                   f"{s.num_steps} {s.spacing} steps to tau {index.t_end}, grid bits {s.grid_bits}; "
                   f"model {index.fingerprint.hex()}; format version {index.version}")
        for i, e in enumerate(index.images):
            click.echo(f"{e.name}\t{e.width}x{e.height}\tchunk {index.chunk_of(i)}")
        return
    if output is None:
        raise CliError("give -o DIR (or --list)")
    made = None
    try:
        made = make_folder(output)
        check_writable(Path(output) / "probe.png")
        model = _load(model_spec)
        wanted = set(only) if only else None
        total = len(wanted) if wanted else len(index.images)
        with tqdm(total=total, unit="image", desc="extracting", file=sys.stderr, disable=None) as bar:
            res = ar.extract(data, model, only=only or None, max_pixels=max_pixels,
                             progress=lambda name: bar.update(1))
        for name, img in res.images:
            path = Path(output) / ar.output_name(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_image(path, img)
    except (*_errors(), CliError) as e:
        _remove_if_empty(made)
        raise e if isinstance(e, CliError) else CliError(str(e)) from None
    click.echo(f"wrote {len(res.images)} images into {output}; {res.seconds:.1f} s "
               f"({res.network_seconds:.1f} s in the network)")
    if res.damaged:
        lost = "; ".join(f"chunk {d.chunk} ({len(d.names)} images from {d.names[0]!r}) {d.reason}" for d in res.damaged)
        raise CliError(f"damaged archive, lost: {lost}")


if __name__ == "__main__":
    main()
