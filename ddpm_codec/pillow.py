"""A Pillow plugin for ``.ddpm`` files: ``import ddpm_codec.pillow`` registers the format "DDPM".

    import ddpm_codec.pillow                     # registers open, save and the .ddpm extension
    from PIL import Image
    Image.open("img.ddpm").save("out.png")       # decodes: exact for a lossless file
    Image.open("photo.png").save("img.ddpm")     # encodes losslessly with the default profile
    im.save("small.ddpm", steps=900)             # or profile=, bpd=, psnr=, model=, effort= (as ddpm_codec.encode)

Opening reads only the header (size, mode "RGB"); the pixels are decoded on ``load()``, with the
model the file names (found by its fingerprint among the shipped and registered models): exactly
for a lossless file (checksum verified), from its last coded step for a lossy or truncated one.
Saving applies :func:`ddpm_codec.imageio.read_image`'s rules (grayscale, palette and opaque alpha
to RGB exactly; anything else refused). Errors are :class:`ddpm_codec.Error`. Follows the
conventions of pillow-heif and pillow-jxl-plugin (an ``ImageFile`` subclass, ``register_*``).
"""
from __future__ import annotations

from PIL import Image, ImageFile

from .coding.container import MAGIC

FORMAT = "DDPM"
EXTENSION = ".ddpm"
SAVE_OPTIONS = ("model", "profile", "steps", "bpd", "psnr", "effort")


def _accept(prefix: bytes) -> bool:
    return prefix[:len(MAGIC)] == MAGIC


class DdpmImageFile(ImageFile.ImageFile):
    """A ``.ddpm`` file as a Pillow image: the header on open, the pixels on ``load()``."""

    format = FORMAT
    format_description = "ddpm-codec (diffusion model) image"

    def _open(self) -> None:
        from .codec import read_header

        data = self.fp.read()
        parsed, _ = read_header(data)
        h = parsed.file.header
        self._data: bytes | None = data
        self._size = (h.width, h.height)
        if isinstance(getattr(type(self), "mode", None), property):
            self._mode = "RGB"
        else:   # Pillow < 10.1: a plain attribute
            self.mode = "RGB"
        self.info["lossless"] = bool(h.lossless)
        self.info["fingerprint"] = h.fingerprint.hex()
        self.tile = []

    def load(self):
        if self._data is not None:
            from .simple import decode

            res = decode(self._data)
            self.load_prepare()
            self.frombytes(res.image.tobytes())
            self.info["lossless"] = res.lossless
            self._data = None
        return super().load()


def _save(im: Image.Image, fp, filename) -> None:
    from .imageio import convert_image
    from .simple import encode

    opts = {k: im.encoderinfo[k] for k in SAVE_OPTIONS if im.encoderinfo.get(k) is not None}
    pixels, _ = convert_image(im, filename or "image")
    model = opts.pop("model", None)
    fp.write(encode(pixels, model, **opts).data)


Image.register_open(FORMAT, DdpmImageFile, _accept)
Image.register_save(FORMAT, _save)
Image.register_extension(FORMAT, EXTENSION)
Image.register_mime(FORMAT, "image/x-ddpm")
