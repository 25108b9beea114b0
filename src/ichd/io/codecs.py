"""Fast pixel decoders: a pydicom decoder plugin backed by imagecodecs, and the plugin order ichd asks for.

pydicom decodes compressed Pixel Data through plugins and, unless told otherwise, tries them in the order they were
registered. For the two syntaxes that dominate real head CT archives that order is slow: JPEG Lossless (process 14,
selection value 1 — CQ500, many PACS exports) goes to pylibjpeg-libjpeg (~10 ms per 512² slice here), and JPEG-LS
(RSNA 2019) to pylibjpeg-libjpeg as well (~16–19 ms). `imagecodecs <https://pypi.org/project/imagecodecs/>`_ wraps
libjpeg-turbo 3 (which decodes lossless JPEG) and CharLS (JPEG-LS): ~2 ms and ~4 ms for the same slices, with
identical output (``tests/unit/io/test_codecs.py`` checks every pixel against the pure plugins on real series).

This module is such a plugin (pydicom's plugin interface: ``is_available(uid)`` and ``_decode_frame(src, runner)``;
see ``pydicom.pixels.decoders.pyjpegls``). :func:`register` adds it to pydicom's decoders, once per process, when the
first image is decoded (never at import). :func:`preferred_plugin` names the plugin :func:`ichd.io.decode.decode_to_hu`
asks for first; when it fails on a file, or imagecodecs is not installed, pydicom's own plugins are used as before.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import DecodeRunner

#: The label of this plugin in pydicom's decoders.
PLUGIN = "ichd-imagecodecs"

JPEG_LOSSLESS = ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
#: Transfer syntaxes this plugin decodes.
SYNTAXES = JPEG_LOSSLESS + JPEG_LS

_REGISTER_LOCK = threading.Lock()  # pydicom's add_plugin is not thread-safe

#: What pydicom reports when a user asks which packages the plugin needs.
DECODER_DEPENDENCIES = {uid: ("numpy", "imagecodecs>=2024.1.1") for uid in SYNTAXES}


def _imagecodecs_has(codec: str) -> bool:
    if importlib.util.find_spec("imagecodecs") is None:
        return False
    import imagecodecs

    try:
        return bool(getattr(imagecodecs, codec).available)
    except AttributeError:  # an imagecodecs built without the codec
        return False


def is_available(uid: str) -> bool:
    """``True`` when imagecodecs is installed with the codec ``uid`` needs (pydicom's plugin interface)."""
    if uid in JPEG_LOSSLESS:
        return _imagecodecs_has("JPEG8")  # libjpeg-turbo >= 3 decodes lossless JPEG (SOF3)
    if uid in JPEG_LS:
        return _imagecodecs_has("JPEGLS")
    return False


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """Decode one grayscale frame to raw little-endian samples (pydicom's plugin interface).

    Only single-sample (grayscale) images are handled; anything else raises, so pydicom's own plugins take it.
    """

    if runner.samples_per_pixel != 1:
        raise ValueError(f"{PLUGIN} decodes grayscale images only")
    arr = decode_codestream(src, runner.transfer_syntax)
    # the container follows the codestream's precision, as with the other plugins; pydicom then applies the
    # pixel representation (a signed view) and, for JPEG-LS, its sign correction
    runner.set_option("bits_allocated", 8 if arr.dtype.itemsize == 1 else 16)
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def decode_codestream(src: bytes, transfer_syntax: str) -> Any:
    """One grayscale frame's codestream (JPEG Lossless or JPEG-LS) decoded to a 2-D array of the codestream's
    precision (uint8 or uint16 samples); raises ValueError for anything else."""
    import imagecodecs
    import numpy as np

    if transfer_syntax in JPEG_LS:
        arr = imagecodecs.jpegls_decode(src)
    elif transfer_syntax in JPEG_LOSSLESS:
        arr = imagecodecs.jpeg8_decode(src)
    else:
        raise ValueError(f"{PLUGIN} does not decode transfer syntax {transfer_syntax}")
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{PLUGIN}: decoded {arr.ndim}-D data, expected one grayscale frame")
    return arr


@functools.cache
def register() -> bool:
    """Add this plugin to pydicom's decoders for :data:`SYNTAXES` (once per process); ``True`` if available."""
    from pydicom.pixels import get_decoder

    added = False
    with _REGISTER_LOCK:
        for uid in SYNTAXES:
            decoder = get_decoder(uid)
            if PLUGIN not in decoder.available_plugins and PLUGIN not in getattr(decoder, "_unavailable", {}):
                decoder.add_plugin(PLUGIN, (__name__, "_decode_frame"))
            added = added or PLUGIN in decoder.available_plugins
    return added


@functools.cache
def preferred_plugin(transfer_syntax: str) -> str | None:
    """The plugin to ask for first for ``transfer_syntax`` (``None``: pydicom's own order)."""
    if transfer_syntax not in SYNTAXES or not register():
        return None
    from pydicom.pixels import get_decoder

    return PLUGIN if PLUGIN in get_decoder(transfer_syntax).available_plugins else None


def decode_options(transfer_syntax: str) -> dict[str, Any]:
    """Keyword arguments for ``pydicom.pixels.pixel_array`` that select the preferred plugin, if any."""
    plugin = preferred_plugin(transfer_syntax)
    return {"decoding_plugin": plugin} if plugin else {}
