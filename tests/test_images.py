"""Image and mask files: reading, validation, resizing to the model and back, atomic writes."""

import numpy as np
import pytest
import torch
from PIL import Image

from lvmtoolkit.errors import ImageError
from lvmtoolkit.images import (
    Fit,
    atomic_write,
    check_writable,
    list_images,
    load_batch,
    read_image,
    read_mask,
    save_grid,
    save_image,
)


def _digit(mnist5k_test_images, i=0) -> np.ndarray:
    return np.rint(mnist5k_test_images[i, 0].numpy() * 255).astype(np.uint8)


def _write(path, array, mode=None, **save_args):
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    image.save(path, **save_args)
    return path


def test_grey_rgb_alpha_jpeg_and_16_bit_files_read_as_the_same_digit(tmp_path, mnist5k_test_images):
    digit = _digit(mnist5k_test_images)
    grey = read_image(_write(tmp_path / "grey.png", digit), channels=1)
    assert grey.shape == (1, 28, 28) and grey.dtype == np.float32
    np.testing.assert_allclose(grey[0], digit / 255.0, atol=1e-7)
    rgb = read_image(_write(tmp_path / "rgb.png", np.stack([digit] * 3, -1)), channels=1)
    np.testing.assert_allclose(rgb, grey, atol=1 / 255)
    # transparent pixels flatten onto black
    rgba = np.stack([np.full_like(digit, 255)] * 3 + [digit], -1)
    alpha = read_image(_write(tmp_path / "alpha.png", rgba), channels=1)
    np.testing.assert_allclose(alpha, grey, atol=1 / 255)
    sixteen = (digit.astype(np.uint16) * 257).astype(np.uint16)
    deep = read_image(_write(tmp_path / "deep.png", sixteen), channels=1)
    np.testing.assert_allclose(deep, grey, atol=1e-6)
    jpeg = read_image(_write(tmp_path / "d.jpg", digit, quality=95), channels=1)
    assert np.abs(jpeg - grey).mean() < 0.02
    three = read_image(tmp_path / "grey.png", channels=3)
    assert three.shape == (3, 28, 28)


def test_masks_white_is_missing_by_default(tmp_path):
    levels = np.zeros((28, 28), np.uint8)
    levels[10:20, 5:15] = 255
    path = _write(tmp_path / "mask.png", levels)
    known = read_mask(path, (28, 28))
    assert not known[10:20, 5:15].any() and known.sum() == 28 * 28 - 100
    assert np.array_equal(read_mask(path, white_is_missing=False), ~known)
    bilevel = _write(tmp_path / "bilevel.png", levels, mode="1")
    assert np.array_equal(read_mask(bilevel), known)


def test_bad_masks(tmp_path):
    grey = np.zeros((28, 28), np.uint8)
    grey[3, 3] = 128
    with pytest.raises(ImageError, match="not binary: 1 pixels are neither black nor white"):
        read_mask(_write(tmp_path / "grey.png", grey))
    with pytest.raises(ImageError, match=r"mask .* is 28x28 pixels, the image is 30x29"):
        read_mask(tmp_path / "grey.png", (29, 30))
    with pytest.raises(ImageError, match="does not exist"):
        read_mask(tmp_path / "missing.png")


def test_unreadable_files(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageError, match="is not an image file Pillow can read"):
        read_image(tmp_path / "notes.png")
    noise = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    good = _write(tmp_path / "good.png", noise)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:800])
    with pytest.raises(ImageError, match="cannot be decoded"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(ImageError, match="is a folder"):
        read_image(tmp_path)


def test_fit_pads_to_the_aspect_ratio_and_round_trips():
    fit = Fit.for_image((60, 30), (28, 28))
    assert fit.padded == (60, 60) and fit.offset == (0, 15)
    image = np.zeros((1, 60, 30), np.float32)
    image[0, 20:40, 10:20] = 1.0
    small = fit.to_model(image)
    assert small.shape == (1, 28, 28)
    # the background of a black image stays black after padding with the border median
    assert small[0, :, :6].max() == 0.0
    back = fit.from_model(small)
    assert back.shape == (1, 60, 30)
    assert np.abs(back - image).mean() < 0.1
    assert Fit.for_image((28, 28), (28, 28)).to_model(image[:, :28, :28]).shape == (1, 28, 28)


def test_a_model_pixel_is_known_only_if_all_it_covers_is_known():
    fit = Fit.for_image((56, 56), (28, 28))
    known = np.ones((56, 56), bool)
    known[0, 0] = False  # one unknown pixel of a 2x2 block
    small = fit.mask_to_model(known)
    assert not small[0, 0] and small.sum() == 28 * 28 - 1


def test_too_small_images_are_refused(tmp_path):
    path = _write(tmp_path / "small.png", np.zeros((20, 40), np.uint8))
    with pytest.raises(ImageError, match="image is 40x20 pixels; the model needs at least 28x28"):
        load_batch([path], (1, 28, 28))


def test_batch_restore_keeps_known_pixels_exactly(tmp_path, mnist5k_test_images):
    digit = np.asarray(Image.fromarray(_digit(mnist5k_test_images)).resize((50, 70)))
    image = _write(tmp_path / "d.png", digit)
    levels = np.zeros((70, 50), np.uint8)
    levels[20:50, 10:40] = 255
    mask = _write(tmp_path / "m.png", levels)
    batch = load_batch([image, image], (1, 28, 28), [mask, mask])
    assert batch.x.shape == (2, 1, 28, 28) and batch.observed.shape == (2, 1, 28, 28)
    assert not batch.observed[:, :, 12:16, 12:16].any() and batch.observed[:, :, 0].all()
    restored = batch.restore(torch.full((2, 1, 28, 28), 0.5))
    assert restored[0].shape == (1, 70, 50) and restored[0].dtype == np.uint8
    assert np.array_equal(restored[0][0][levels == 0], digit[levels == 0])
    assert (restored[0][0][levels == 255] == 128).all()


def test_list_images(tmp_path):
    for name in ("b.png", "a.JPG", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="holds no image files"):
        list_images(tmp_path / "empty")


def test_save_image_is_atomic(tmp_path):
    target = tmp_path / "out.png"
    save_image(target, torch.rand(1, 28, 28))
    before = target.read_bytes()

    def fail_half_way(tmp):
        with open(tmp, "wb") as handle:
            handle.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    with pytest.raises(ImageError, match="No space left on device"):
        atomic_write(target, fail_half_way)
    assert target.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temporary left
    assert Image.open(target).size == (28, 28)


def test_check_writable(tmp_path):
    (tmp_path / "file.txt").write_text("")
    for path, message in [
        (tmp_path / "nowhere" / "out.png", "does not exist"),
        (tmp_path / "file.txt" / "out.png", "does not exist"),
        (tmp_path, "is a folder"),
        (tmp_path / "out.xyz", "unknown image suffix"),
    ]:
        with pytest.raises(ImageError, match=message):
            check_writable(path)
    assert check_writable(tmp_path / "out.png") == tmp_path / "out.png"


def test_save_grid(tmp_path):
    images = torch.rand(5, 1, 28, 28)
    missing = torch.zeros(5, 1, 28, 28, dtype=torch.bool)
    missing[:, :, :4] = True
    path = save_grid(
        tmp_path / "grid.png",
        [("input", images), ("result", images)],
        scale=2,
        missing=missing,
        max_rows=3,
    )
    grid = np.asarray(Image.open(path).convert("RGB"))
    assert grid.shape[0] == 14 + 3 * (56 + 4) + 4
    # the missing rows of the first cell are red
    assert tuple(grid[14 + 4 + 1, 4 + 1]) == (200, 30, 30)
