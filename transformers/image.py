"""Image feature: encoded PNG/JPEG in a V2 BYTES input -> the engine's pixel tensor; top-k labels out.

Decoding is the one per-image step (Pillow decodes one image at a time); everything after it
(scale, normalise, layout, dtype) runs once on the stacked batch. Raw bytes arrive over gRPC and
binary REST; JSON clients send base64 text, which is recognised by the missing image signature.
"""

from __future__ import annotations

import binascii
import io
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from kbundle.errors import ConfigError, EngineError, InvalidRequest
from kbundle.specs import DYNAMIC, TensorSpec, numpy_dtype
from kbundle.transformers.decode_budget import ByteBudget, pillow_pixel_bytes, shared_budget
from kbundle.transformers.features import bytes_column, required
from kbundle.transformers.spec import Entry, read_labels

SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
FORMATS = ("PNG", "JPEG")
COLOR_MODES = {"L": 1, "RGB": 3}
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
LAYOUTS = ("NHWC", "NCHW", "flat")
# Pillow's resampling support radius per filter: its coefficient tables hold ~2 x support
# doubles per source column and row (a 39 M-wide image into 8 pixels: 312 MB of tables).
SUPPORT = {"nearest": 0.0, "box": 0.5, "bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}
# Downscales of more than this factor reduce by an integer factor first (Image.reduce, no
# tables), then resample what is left; below it the resize is Pillow's exact one.
REDUCING_GAP = 8.0
DEFAULT_MAX_IMAGE_BYTES = 256 * 1024 * 1024
_DECODE_ERRORS = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    OSError,
    SyntaxError,
    ValueError,
)


def image_bytes(where: str, value: bytes) -> bytes:
    """The encoded image: raw bytes as sent, or decoded from base64 text (optionally a data: URI)."""
    if value.startswith(SIGNATURES):
        return value
    text = value.split(b",", 1)[1] if value.startswith(b"data:") else value
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{where}: neither PNG/JPEG bytes nor base64 text of them") from None


class ImageFeature:
    """`kind: image`: one BYTES input of encoded images -> one predictor pixel tensor."""

    blocking = True

    def __init__(
        self,
        name: str,
        tensor: str,
        color: str,
        size: tuple[int, int] | None,
        resample: str,
        scale: float,
        offset: float,
        mean: np.ndarray | None,
        std: np.ndarray | None,
        layout: str,
        datatype: str,
        max_pixels: int,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        budget: ByteBudget | None = None,
    ):
        self.name, self.tensor, self.color = name, tensor, color
        self.size, self.resample = size, RESAMPLE[resample]
        self._support = SUPPORT[resample]
        self.scale, self.offset, self.mean, self.std = scale, offset, mean, std
        self.layout, self.datatype, self.max_pixels = layout, datatype, max_pixels
        self.max_image_bytes = max_image_bytes
        self.budget = budget or shared_budget()
        # Per output pixel: the converted image, its numpy copy, and `_to_tensor`'s float32
        # temporaries and cast (measured peak: ~3 float copies alive at once).
        itemsize = np.dtype(numpy_dtype(datatype)).itemsize
        channels = COLOR_MODES[color]
        self._out_pixel_bytes = pillow_pixel_bytes(color) + channels * (1 + 3 * max(itemsize, 4))

    @classmethod
    def from_spec(cls, entry: Entry, model_dir: Path) -> ImageFeature:
        color = entry.choice("color", tuple(COLOR_MODES), "RGB")
        size = entry.get("size", kind=list)
        if size is not None and (
            len(size) != 2 or not all(isinstance(d, int) and d > 0 for d in size)
        ):
            raise ConfigError(f"{entry.where}: 'size' must be [height, width], got {size!r}")
        channels = COLOR_MODES[color]
        return cls(
            name=entry.get("name", "image", kind=str),
            tensor=entry.require("tensor", kind=str),
            color=color,
            size=(size[0], size[1]) if size else None,
            resample=entry.choice("resample", tuple(RESAMPLE), "bilinear"),
            scale=float(entry.get("scale", 1 / 255, kind=(int, float))),
            offset=float(entry.get("offset", 0.0, kind=(int, float))),
            mean=_per_channel(entry, "mean", channels),
            std=_per_channel(entry, "std", channels),
            layout=entry.choice("layout", LAYOUTS, "NCHW"),
            datatype=entry.datatype("datatype", "FP32"),
            max_pixels=int(entry.positive("max_pixels", 40_000_000)),
            max_image_bytes=int(entry.positive("max_image_bytes", DEFAULT_MAX_IMAGE_BYTES)),
        )

    def client_inputs(self) -> list[TensorSpec]:
        return [TensorSpec(self.name, "BYTES", (DYNAMIC,))]

    def consumes(self, name: str) -> bool:
        return name == self.name

    def encode(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        where = f"input '{self.name}'"
        values = bytes_column(
            where, required(inputs, self.name, "encoded PNG/JPEG images, BYTES [N]")
        )
        opened = [self._open(f"{where} element {i}", v) for i, v in enumerate(values)]
        try:
            cost = sum(self._cost(w, image) for w, image in opened)
            with self.budget.hold(where, cost):
                images = [self._decode(w, image) for w, image in opened]
                shapes = {image.shape for image in images}
                if len(shapes) > 1:
                    raise InvalidRequest(
                        f"{where}: images in one request must share a size when the spec has no 'size' (got {sorted(shapes)})"
                    )
                return {self.tensor: self._to_tensor(np.stack(images))}
        finally:
            for _, image in opened:
                image.close()

    def _open(self, where: str, value: bytes) -> tuple[str, Image.Image]:
        """The image with only its header read: size and mode, no pixels yet."""
        data = image_bytes(where, value)
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except _DECODE_ERRORS as exc:
            raise InvalidRequest(
                f"{where}: not a decodable PNG/JPEG image ({_reason(exc)})"
            ) from None
        if image.width * image.height > self.max_pixels:
            image.close()
            raise InvalidRequest(
                f"{where}: {image.width}x{image.height} is over {self.max_pixels} pixels"
            )
        return where, image

    def _gap(self, width: int, height: int) -> float | None:
        scale = max(width / self.size[1], height / self.size[0])
        return REDUCING_GAP if scale > 4 * REDUCING_GAP else None

    def _cost(self, where: str, image: Image.Image) -> int:
        """Bytes decoding this image holds at its peak, summed as an upper bound: the source
        pixels plus the decoder's two row buffers, the converted copy, the resize and the
        tensor steps; 400 over `max_image_bytes`, before a pixel is decoded."""
        width, height = image.size
        source = pillow_pixel_bytes(image.mode)
        cost = width * height * source + 2 * _row_bytes(image)
        cost += width * height * pillow_pixel_bytes(self.color)
        out = width * height
        if self.size is not None:
            out = self.size[0] * self.size[1]
            cost += self._resize_cost(width, height)
        cost += out * self._out_pixel_bytes
        if cost > self.max_image_bytes:
            raise InvalidRequest(
                f"{where}: {width}x{height} {image.mode} needs {cost} bytes to decode, over "
                f"max_image_bytes {self.max_image_bytes} (width x height x channels x bytes "
                "per channel, through conversion, resize and the tensor)"
            )
        return cost

    def _resize_cost(self, width: int, height: int) -> int:
        """The reduced copy (when the gap applies) and Pillow's coefficient tables (doubles)."""
        gap = self._gap(width, height)
        fx = max(1, int(width / self.size[1] / gap)) if gap else 1
        fy = max(1, int(height / self.size[0] / gap)) if gap else 1
        w, h = -(-width // fx), -(-height // fy)
        reduced = w * h * pillow_pixel_bytes(self.color) if gap else 0
        return reduced + int(8 * (2 * self._support + 1) * (w + h))

    def _decode(self, where: str, image: Image.Image) -> np.ndarray:
        try:
            converted = image.convert(self.color)
            image.close()  # the source pixels go now, not when the request ends
            if self.size is not None and converted.size != (self.size[1], self.size[0]):
                converted = converted.resize(
                    (self.size[1], self.size[0]),
                    self.resample,
                    reducing_gap=self._gap(*converted.size),
                )
            return np.asarray(converted)
        except _DECODE_ERRORS as exc:
            raise InvalidRequest(
                f"{where}: not a decodable PNG/JPEG image ({_reason(exc)})"
            ) from None

    def _to_tensor(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W[, C]) uint8 -> scaled, normalised, laid out and cast, in whole-batch numpy ops."""
        x = pixels.reshape(*pixels.shape[:3], -1).astype(np.float32)
        x = x * np.float32(self.scale) + np.float32(self.offset)
        if self.mean is not None:
            x -= self.mean
        if self.std is not None:
            x /= self.std
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        elif self.layout == "flat":
            x = x.reshape(len(x), -1)
        return np.ascontiguousarray(x.astype(numpy_dtype(self.datatype), copy=False))


def _row_bytes(image: Image.Image) -> int:
    """One encoded row as the decoder holds it (PNG keeps the previous row and the current)."""
    wide = any(";16" in str(tile.args) for tile in image.tile)
    return image.width * len(image.getbands()) * (2 if wide else 1) + 1


def _per_channel(entry: Entry, key: str, channels: int) -> np.ndarray | None:
    values = entry.get(key, kind=(list, int, float))
    if values is None:
        return None
    values = values if isinstance(values, list) else [values] * channels
    if len(values) != channels or (key == "std" and any(v == 0 for v in values)):
        raise ConfigError(
            f"{entry.where}: '{key}' needs {channels} non-zero value(s), got {values!r}"
        )
    return np.asarray(values, dtype=np.float32)


class TopKLabels:
    """`kind: topk`: class scores [N, C] -> the k best labels (BYTES [N, k]) and scores (FP32 [N, k])."""

    def __init__(
        self,
        tensor: str,
        k: int,
        labels: list[str] | None,
        activation: str,
        labels_output: str,
        scores_output: str,
    ):
        self.tensor, self.k, self.labels, self.activation = tensor, k, labels, activation
        self.labels_output, self.scores_output = labels_output, scores_output
        self._label_bytes = None if labels is None else _bytes_array(labels)

    @classmethod
    def from_spec(cls, entry: Entry, model_dir: Path) -> TopKLabels:
        return cls(
            tensor=entry.require("tensor", kind=str),
            k=int(entry.positive("k", 1)),
            labels=read_labels(entry, model_dir),
            activation=entry.choice("activation", ("none", "softmax", "sigmoid"), "none"),
            labels_output=entry.get("labels_output", "labels", kind=str),
            scores_output=entry.get("scores_output", "scores", kind=str),
        )

    def predictor_outputs(self) -> list[str]:
        return [self.tensor]

    def client_outputs(self) -> list[TensorSpec]:
        return [
            TensorSpec(self.labels_output, "BYTES", (DYNAMIC, self.k)),
            TensorSpec(self.scores_output, "FP32", (DYNAMIC, self.k)),
        ]

    def decode(
        self, outputs: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        scores = np.asarray(outputs[self.tensor], dtype=np.float32)
        if scores.ndim != 2:
            raise EngineError(
                f"predictor output '{self.tensor}' is {list(scores.shape)}, top-k needs [N, classes]"
            )
        if self.labels is not None and len(self.labels) != scores.shape[1]:
            raise EngineError(
                f"predictor output '{self.tensor}' has {scores.shape[1]} classes but the spec has {len(self.labels)} labels"
            )
        scores = _activate(scores, self.activation)
        k = min(self.k, scores.shape[1])
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        names = (
            self._label_bytes
            if self._label_bytes is not None
            else _bytes_array(range(scores.shape[1]))
        )
        labels = names[best]
        return {
            self.labels_output: labels,
            self.scores_output: np.take_along_axis(scores, best, axis=1),
        }


def _bytes_array(values) -> np.ndarray:
    items = [str(v).encode("utf-8") for v in values]
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _activate(scores: np.ndarray, activation: str) -> np.ndarray:
    if activation == "softmax":
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-scores))
    return scores


def _reason(exc: Exception) -> str:
    """Pillow's reason in words: never `<_io.BytesIO object at 0x...>` (the buffer's repr)."""
    if isinstance(exc, UnidentifiedImageError):
        return "the bytes are not a PNG or JPEG file"
    return re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the image", str(exc)) or type(exc).__name__
