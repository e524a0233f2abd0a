"""Frame decoding (JPEG, PNG) and clip augmentation: encoded frames in, one normalised (T, 3, H, W) clip out.

A clip is augmented as a whole: its frames are stacked into one `tv_tensors.Video`, so a single
torchvision v2 call draws one flip, one crop and one erasing box for every frame. Frames that moved
differently from one another would be motion the temporal model learns from but the test never shows.

All geometry runs on uint8 (a quarter of the memory traffic of float32) and the clip becomes float only
once, in a fused scale-and-normalise pass at the end; see bench/bench_decode.py for what this buys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from gltr_platform.data.index import DatasetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_frames(blobs: Sequence[bytes], names: Sequence[str]) -> list[torch.Tensor]:
    """Decode JPEG or PNG bytes to RGB uint8 (3, h, w) tensors; a frame that fails raises DatasetError."""
    # torchvision 0.29 deprecates its codecs for TorchCodec (not a dependency here); these decoders still
    # ship: libjpeg-turbo takes a whole JPEG clip in one call. PNG frames (iLIDS-VID, PRID-2011) are packed
    # as the datasets ship them rather than transcoded to JPEG: that would lose pixels against the
    # published data and tie the packed bytes, hence the version hash, to the encoder's version; and a
    # 128x64 PNG decodes in ~130 us against ~90 us for the same JPEG (one core), small next to a step.
    encoded = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs if blob]
    if len(encoded) == len(blobs) and not any(blob.startswith(_PNG_SIGNATURE) for blob in blobs):
        try:
            return decode_jpeg(encoded, mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # the batched call does not say which frame failed; find it below
    frames = []
    for blob, name in zip(blobs, names, strict=True):
        try:
            # decode_image reads the format from the bytes' signature (JPEG, PNG, ...).
            frames.append(decode_image(torch.frombuffer(bytearray(blob), dtype=torch.uint8), mode=ImageReadMode.RGB))
        except (RuntimeError, ValueError) as err:
            raise DatasetError(f"cannot decode frame {name!r} as JPEG or PNG: {err}") from err
    return frames


def normalize_clip(clip: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) to float32 scaled to [0, 1] and normalised with the ImageNet mean and std.

    Same result as v2.ToDtype(float32, scale=True) + v2.Normalize, with one pass over the float clip
    fewer; works on whichever device the clip is on (a trainer may normalise on the GPU instead).
    """
    mean = torch.tensor(IMAGENET_MEAN, device=clip.device).view(3, 1, 1) * 255
    inv_std = 1 / (torch.tensor(IMAGENET_STD, device=clip.device).view(3, 1, 1) * 255)
    return clip.float().sub_(mean).mul_(inv_std)


class ClipTransform:
    """Resize decoded frames to (height, width), stack them, augment the clip as one, normalise."""

    def __init__(self, height: int, width: int, augment: v2.Transform | None = None, normalize: bool = True):
        self.size = [height, width]
        self.augment = augment  # v2 transforms on the uint8 Video, drawing one set of parameters
        # normalize=False hands out uint8 clips: 4x less to pass between processes and to copy to the
        # GPU, where normalize_clip then runs almost for free.
        self.normalize = normalize

    def __call__(self, frames: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Turn T uint8 frames (a list of (3, h, w) or a (T, 3, h, w) tensor) into a (T, 3, H, W) clip:
        float and normalised, or uint8 with normalize=False."""
        clip = self.geometry(frames)
        return normalize_clip(clip) if self.normalize else clip

    def geometry(self, frames: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """The uint8 (T, 3, H, W) clip after resizing and augmentation, before normalisation."""
        clip = self._stack_resized(frames)
        if self.augment is None:
            return clip
        return self.augment(tv_tensors.Video(clip)).as_subclass(torch.Tensor)

    def _stack_resized(self, frames: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(frames, torch.Tensor):
            resized = F.resize(frames, self.size, antialias=True)
            # Augmentation erases in place: never on the caller's tensor.
            return frames.clone() if resized is frames and self.augment is not None else resized
        if len({tuple(f.shape) for f in frames}) == 1:
            return F.resize(torch.stack(list(frames)), self.size, antialias=True)
        # Frames of one tracklet can differ in size (DukeMTMC-VideoReID crops do): resize each first.
        return torch.stack([F.resize(f, self.size, antialias=True) for f in frames])


def build_train_transform(
    height: int, width: int, *, flip_p: float = 0.5, pad: int = 10, erase_p: float = 0.5, normalize: bool = True
) -> ClipTransform:
    """Training augmentation: random flip, pad-and-random-crop, random erasing, the same on every frame."""
    steps: list[v2.Transform] = []
    # Crop before flip: the crop is a view into the padded clip, and a flip then copies only the
    # cropped part into a contiguous clip, which converts to float faster than the strided view.
    if pad > 0:
        steps.append(v2.RandomCrop((height, width), padding=pad, fill=0))
    if flip_p > 0:
        steps.append(v2.RandomHorizontalFlip(p=flip_p))
    if erase_p > 0:
        # Erase with the ImageNet mean colour, which normalisation maps to ~0: the box carries no signal.
        # In place is safe: the clip is a fresh tensor made by ClipTransform.
        mean_colour = [round(255 * m) for m in IMAGENET_MEAN]
        steps.append(v2.RandomErasing(p=erase_p, value=mean_colour, inplace=True))
    return ClipTransform(height, width, v2.Compose(steps) if steps else None, normalize=normalize)


def build_test_transform(height: int, width: int) -> ClipTransform:
    """Test transform: resize and normalise only, deterministic."""
    return ClipTransform(height, width)
