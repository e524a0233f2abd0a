"""Clip transforms: one set of augmentation parameters per clip, ImageNet normalisation, JPEG/PNG decoding."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from gltr_platform.data.index import DatasetError
from gltr_platform.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_test_transform,
    build_train_transform,
    decode_frames,
    normalize_clip,
)

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities")

H, W, T = 32, 16, 6


def textured_frame(seed: int = 0, h: int = H, w: int = W) -> torch.Tensor:
    """A uint8 (3, h, w) frame with no symmetry, so flips and shifts are visible."""
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed)).to(torch.uint8)


def jpeg_bytes(frame: torch.Tensor, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_train_transform_gives_every_frame_of_a_clip_the_same_flip_crop_and_erase():
    transform = build_train_transform(H, W, flip_p=0.5, pad=10, erase_p=0.5)
    frame = textured_frame()
    for seed in range(30):
        torch.manual_seed(seed)
        out = transform([frame] * T)
        assert torch.equal(out, out[:1].expand_as(out)), f"frames augmented differently (seed {seed})"


def test_train_transform_does_augment_clips_differently_across_calls():
    transform = build_train_transform(H, W)
    plain = build_test_transform(H, W)([textured_frame()] * T)
    torch.manual_seed(0)
    outs = [transform([textured_frame()] * T) for _ in range(10)]
    assert sum(not torch.equal(o, plain) for o in outs) >= 8
    assert len({o.sum().item() for o in outs}) >= 8


def test_flip_mirrors_every_frame():
    frames = [textured_frame(s) for s in range(T)]
    flipped = build_train_transform(H, W, flip_p=1.0, pad=0, erase_p=0)(frames)
    plain = build_test_transform(H, W)(frames)
    assert torch.equal(flipped, plain.flip(-1))


def test_pad_and_crop_shift_every_frame_by_the_same_offset_and_fill_with_black():
    frames = [textured_frame(s) for s in range(T)]
    plain = build_test_transform(H, W)(frames)
    black = (torch.zeros(3) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    padded = black.view(1, 3, 1, 1).expand(T, 3, H + 20, W + 20).clone()
    padded[..., 10 : 10 + H, 10 : 10 + W] = plain
    transform = build_train_transform(H, W, flip_p=0, pad=10, erase_p=0)
    offsets = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out = transform(frames)
        matches = [
            (i, j)
            for i in range(21)
            for j in range(21)
            if torch.allclose(out, padded[..., i : i + H, j : j + W], atol=1e-5)
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1


def test_random_erasing_blanks_the_same_box_in_every_frame_to_about_zero():
    frames = [textured_frame(s) for s in range(T)]
    torch.manual_seed(0)
    out = build_train_transform(H, W, flip_p=0, pad=0, erase_p=1.0)(frames)
    plain = build_test_transform(H, W)(frames)
    changed = (out != plain).any(dim=1)  # (T, H, W)
    assert changed.any()
    assert torch.equal(changed, changed[:1].expand_as(changed))
    erased = out.permute(0, 2, 3, 1)[changed]
    assert erased.abs().max() < 0.02  # the mean colour normalises to 0 up to uint8 rounding


def test_erasing_does_not_modify_the_callers_tensor():
    clip = torch.stack([textured_frame(s) for s in range(T)])
    before = clip.clone()
    build_train_transform(H, W, flip_p=0, pad=0, erase_p=1.0)(clip)
    assert torch.equal(clip, before)


@pytest.mark.parametrize("build", [build_train_transform, build_test_transform])
def test_output_is_float32_t_3_h_w_at_the_requested_size(build):
    frames = [textured_frame(s, h=64, w=40) for s in range(T)]
    out = build(H, W)(frames)
    assert out.shape == (T, 3, H, W) and out.dtype == torch.float32 and out.is_contiguous()


def test_frames_of_different_sizes_in_one_clip_are_resized_to_one_size():
    frames = [textured_frame(0, 64, 32), textured_frame(1, 50, 20), textured_frame(2, H, W)]
    assert build_test_transform(H, W)(frames).shape == (3, 3, H, W)


def test_normalisation_is_imagenet_mean_and_std_like_todtype_plus_normalize():
    clip = torch.stack([textured_frame(s) for s in range(T)])
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(clip)
    assert torch.allclose(build_test_transform(H, W)(clip), reference, atol=1e-5)
    white = build_test_transform(H, W)(torch.full((1, 3, H, W), 255, dtype=torch.uint8))
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(white[0, :, 0, 0], expected, atol=1e-5)


def test_test_transform_is_deterministic():
    frames = [textured_frame(s, h=48, w=24) for s in range(T)]
    transform = build_test_transform(H, W)
    torch.manual_seed(0)
    a = transform(frames)
    torch.manual_seed(1)
    assert torch.equal(a, transform(frames))


def test_train_transform_is_reproducible_from_torch_seed():
    transform = build_train_transform(H, W)
    frames = [textured_frame(s) for s in range(T)]
    torch.manual_seed(3)
    a = transform(frames)
    torch.manual_seed(3)
    assert torch.equal(a, transform(frames))


def test_decode_frames_returns_rgb_uint8_chw_close_to_the_encoded_pixels():
    ramp = torch.arange(H * W, dtype=torch.float32).view(1, H, W) / (H * W) * 200
    frames = [(ramp + torch.tensor([10.0, 20.0 * s, 40.0]).view(3, 1, 1)).to(torch.uint8) for s in range(3)]
    decoded = decode_frames([jpeg_bytes(f) for f in frames], ["a", "b", "c"])
    assert [d.shape for d in decoded] == [(3, H, W)] * 3
    assert all(d.dtype == torch.uint8 for d in decoded)
    error = np.mean([(d.float() - f.float()).abs().mean().item() for d, f in zip(decoded, frames, strict=True)])
    assert error < 3


def test_grayscale_jpegs_decode_to_three_channels():
    buf = io.BytesIO()
    Image.new("L", (W, H), 128).save(buf, format="JPEG")
    assert decode_frames([buf.getvalue()], ["gray.jpg"])[0].shape == (3, H, W)


def png_bytes(frame: torch.Tensor, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame.permute(1, 2, 0).numpy()).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def test_png_frames_decode_losslessly_alone_or_mixed_with_jpegs():
    frames = [textured_frame(s) for s in range(3)]

    pngs = decode_frames([png_bytes(f) for f in frames], ["a.png", "b.png", "c.png"])
    mixed = decode_frames([jpeg_bytes(frames[0]), png_bytes(frames[1])], ["a.jpg", "b.png"])

    assert all(torch.equal(d, f) for d, f in zip(pngs, frames, strict=True))
    assert torch.equal(mixed[1], frames[1]) and mixed[0].shape == (3, H, W)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA"])
def test_grey_palette_and_alpha_pngs_decode_to_three_channels(mode):
    assert decode_frames([png_bytes(textured_frame(), mode)], [f"{mode}.png"])[0].shape == (3, H, W)


def test_a_corrupt_png_raises_dataset_error_naming_it():
    good = png_bytes(textured_frame())

    with pytest.raises(DatasetError, match="cannot decode frame 'cam_a/0002.png' as JPEG or PNG"):
        decode_frames([good, good[: len(good) // 2], good], ["cam_a/0001.png", "cam_a/0002.png", "cam_a/0003.png"])


@pytest.mark.parametrize(
    "corrupt",
    [b"not a jpeg", b"", "truncated"],
    ids=["garbage", "empty", "truncated"],
)
def test_a_corrupt_frame_raises_dataset_error_naming_it(corrupt):
    good = jpeg_bytes(textured_frame())
    bad = good[: len(good) // 2] if corrupt == "truncated" else corrupt
    with pytest.raises(DatasetError, match="cam1/0002.jpg"):
        decode_frames([good, bad, good], ["cam1/0001.jpg", "cam1/0002.jpg", "cam1/0003.jpg"])


def test_unnormalised_train_clips_are_uint8_and_normalise_to_the_same_clip():
    frames = [torch.randint(0, 256, (3, 40, 20), dtype=torch.uint8) for _ in range(4)]
    torch.manual_seed(7)
    as_float = build_train_transform(32, 16, pad=2)(frames)
    torch.manual_seed(7)
    as_uint8 = build_train_transform(32, 16, pad=2, normalize=False)(frames)
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == (4, 3, 32, 16)
    assert torch.allclose(normalize_clip(as_uint8), as_float)
