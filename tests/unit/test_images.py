"""ImageFolderSet on a small tree of PNG and JPEG files drawn here: classes, shapes, normalisation,
determinism of both transforms, the decode-failure policy, and the one-line errors."""

from __future__ import annotations

import io
import logging
import random
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddtrain.data.images import MEAN, STD, ImageFolderSet
from tests.assertions import one_line_error

RED = (200, 40, 10)


def gradient(width, height):
    """An image whose every crop and flip looks different, so random transforms show."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    pixels = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    return Image.fromarray(pixels.astype(np.uint8))


def jpeg_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def tree(tmp_path):
    """cat: 2 PNGs (one RGB, one grayscale), dog: 2 JPEGs, fish: 1 RGBA PNG; 5 samples in all."""
    root = tmp_path / "images"
    for name in ("cat", "dog", "fish"):
        (root / name).mkdir(parents=True)
    Image.new("RGB", (40, 30), RED).save(root / "cat" / "a.png")
    Image.new("L", (30, 50), 128).save(root / "cat" / "b.png")
    gradient(64, 48).save(root / "dog" / "a.jpg", quality=95)
    (root / "dog" / "b.JPEG").write_bytes(jpeg_bytes(gradient(20, 36)))
    Image.new("RGBA", (33, 33), (0, 0, 255, 100)).save(root / "fish" / "a.png")
    (root / "fish" / "notes.txt").write_text("not an image")
    return root




def normalised(rgb):
    return [(c / 255 - m) / s for c, m, s in zip(rgb, MEAN, STD)]


def test_classes_samples_and_spec(tree):
    data = ImageFolderSet(tree, 16)
    assert data.classes == ["cat", "dog", "fish"]
    assert [(p.split("/")[-2], y) for p, y in data.samples] == [
        ("cat", 0), ("cat", 0), ("dog", 1), ("dog", 1), ("fish", 2)]
    assert len(data) == 5  # notes.txt is not an image
    spec = data.spec
    assert (spec.kind, spec.channels, spec.image_size, spec.num_classes) == ("image", 3, 16, 3)


@pytest.mark.parametrize("train", [True, False])
def test_every_sample_is_a_plain_float_rgb_tensor(tree, train):
    data = ImageFolderSet(tree, 12, train=train)
    for i in range(len(data)):
        x, y = data[i]
        assert type(x) is torch.Tensor and x.dtype == torch.float32 and x.shape == (3, 12, 12)
        assert isinstance(y, int) and y == data.samples[i][1]
    xs, ys = next(iter(torch.utils.data.DataLoader(data, batch_size=5)))
    assert xs.shape == (5, 3, 12, 12) and ys.tolist() == [0, 0, 1, 1, 2]


def test_eval_normalises_with_imagenet_statistics(tree):
    data = ImageFolderSet(tree, 8, train=False)
    red, gray = data[0][0], data[1][0]
    for channel, value in enumerate(normalised(RED)):
        assert torch.allclose(red[channel], torch.full((8, 8), value), atol=1e-5)
    # A grayscale file becomes RGB: three equal channels before normalisation.
    for channel, value in enumerate(normalised((128, 128, 128))):
        assert torch.allclose(gray[channel], torch.full((8, 8), value), atol=1e-5)


def test_eval_is_the_centre_crop_of_the_resized_image(tree):
    data = ImageFolderSet(tree, 24, train=False)
    x = data[2][0]  # dog/a.jpg, 64x48: shorter side to round(24*256/224)=27, so 36x27, crop 24x24
    resized = np.asarray(gradient(64, 48).resize((36, 27), Image.BILINEAR), dtype=np.float32) / 255
    top, left = round((27 - 24) / 2), round((36 - 24) / 2)
    expected = torch.from_numpy(resized[top : top + 24, left : left + 24]).permute(2, 0, 1)
    pixels = x * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    # JPEG loss leaves about 0.002; a crop one pixel off in either direction is 0.014 or more.
    assert (pixels - expected).abs().mean() < 0.005


def test_eval_does_not_depend_on_any_rng(tree):
    data = ImageFolderSet(tree, 16, train=False)
    torch.manual_seed(0)
    first = data[2][0]
    torch.manual_seed(123)
    assert torch.equal(first, data[2][0])


def test_train_depends_on_torch_seed_alone(tree):
    data = ImageFolderSet(tree, 16, train=True)

    def sample(seed, other):
        torch.manual_seed(seed)
        random.seed(other)
        np.random.seed(other)
        return data[2][0]

    assert torch.equal(sample(0, 1), sample(0, 2))
    assert not torch.equal(sample(0, 1), sample(1, 1))
    # Training crops are random; evaluation's is fixed: the two differ.
    assert not torch.equal(sample(0, 1), ImageFolderSet(tree, 16, train=False)[2][0])


def test_an_empty_class_folder_keeps_its_index(tree):
    (tree / "ant").mkdir()
    data = ImageFolderSet(tree, 8)
    assert data.classes[0] == "ant" and data.spec.num_classes == 4
    assert [y for _, y in data.samples] == [1, 1, 2, 2, 3]


# --------------------------------------------------------------------------- undecodable files
@pytest.fixture
def broken_tree(tree):
    """tree plus two files with image names that do not decode: garbage, and a cut-off JPEG."""
    (tree / "cat" / "c_truncated.jpg").write_bytes(jpeg_bytes(gradient(64, 64))[:400])
    (tree / "fish" / "z_garbage.png").write_bytes(b"this is not a png" * 10)
    return tree


def test_skip_is_the_default_and_gives_the_next_sample(broken_tree, caplog):
    data = ImageFolderSet(broken_tree, 8, train=False)
    names = [p.split("/")[-1] for p, _ in data.samples]
    assert names == ["a.png", "b.png", "c_truncated.jpg", "a.jpg", "b.JPEG", "a.png", "z_garbage.png"]
    with caplog.at_level(logging.WARNING, logger="ddtrain"):
        x, y = data[2]
        assert torch.equal(x, data[3][0]) and y == 1  # the next file, dog/a.jpg
        x, y = data[6]
        assert torch.equal(x, data[0][0]) and y == 0  # the last wraps to the first
        data[6]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2  # once per file, not once per read
    assert "c_truncated.jpg" in warned[0] and "z_garbage.png" in warned[1]


def test_stop_names_the_file_and_the_option(broken_tree):
    data = ImageFolderSet(broken_tree, 8, on_bad="stop")
    assert data[0][0].shape == (3, 8, 8)
    message = one_line_error(lambda: data[6])
    assert str(broken_tree / "fish" / "z_garbage.png") in message
    assert "cannot be decoded" in message and "data.on_bad_image=skip" in message


def test_when_no_file_decodes_skip_gives_up(tmp_path):
    (tmp_path / "cat").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp_path / "cat" / name).write_bytes(b"garbage")
    data = ImageFolderSet(tmp_path, 8)
    assert "no image file under it can be decoded" in one_line_error(lambda: data[1])


# --------------------------------------------------------------------------- one-line errors
def test_root_missing(tmp_path):
    root = tmp_path / "nope"
    message = one_line_error(lambda: ImageFolderSet(root, 8, key="data.val_root"))
    assert f"data.val_root={root} does not exist" in message
    assert "one subfolder of images per class" in message


def test_root_is_a_file(tree):
    path = tree / "cat" / "a.png"
    assert f"data.root={path} is not a directory" in one_line_error(lambda: ImageFolderSet(path, 8))


def test_no_class_subfolders(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "loose.png")
    message = one_line_error(lambda: ImageFolderSet(tmp_path, 8))
    assert f"data.root={tmp_path} has no class subfolders" in message and "root/cat/1.jpg" in message


def test_no_image_files_lists_the_extensions(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("no images here")
    message = one_line_error(lambda: ImageFolderSet(tmp_path, 8))
    assert "holds no image files" in message and ".jpg, .jpeg, .png" in message


def test_unknown_on_bad(tree):
    message = one_line_error(lambda: ImageFolderSet(tree, 8, on_bad="ignore"))
    assert message == "data.on_bad_image='ignore' is not allowed; choose one of: skip, stop"


@pytest.mark.parametrize("size", [0, -4])
def test_image_size_must_be_positive(tree, size):
    assert f"data.image_size={size} must be > 0" in one_line_error(lambda: ImageFolderSet(tree, size))


def test_without_torchvision_the_error_says_how_to_install_it(tree, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)  # makes the import fail
    message = one_line_error(lambda: ImageFolderSet(tree, 8))
    assert "needs torchvision" in message and "pip install torchvision" in message
