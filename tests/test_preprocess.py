"""Owl3 image preprocessing (owl_cpp/images.py + families/owl3/preprocess.py) against docs/owl3.md §5 and §6.4,
with the settings owl-export writes into decoder.gguf (tests/owl3_image_config.py).

- grids: the worked examples of §5.2, and the official anchor_rank (re-written in torch from its published
  arithmetic: int64 boxes, float32 IoU) over many sizes and aspect ratios;
- pixels: identical to a straightforward PIL + numpy re-computation (resize, crop row-major, global view last,
  x/255, (x-0.5)/0.5); byte-identical to Pillow 12's bicubic even when Pillow 13 is installed (pinned digests);
- odd modes (RGBA, LA, P, L, 1, CMYK, I;16, numpy layouts), tiny images, huge images, bad input;
- prompt templates v2_global / v3_global; no torch at run time.
"""
from __future__ import annotations

import hashlib
import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from owl3_image_config import GRID_SQU_6, OFFICIAL_SIZE, image_config
from owl_cpp import images
from owl_cpp.families.owl3 import preprocess as pre

BICUBIC = Image.Resampling.BICUBIC
PILLOW_MAJOR = int(Image.__version__.split(".")[0])


def synthetic(w: int, h: int) -> np.ndarray:
    """Deterministic RGB test pattern with edges and texture (no RNG: identical on every numpy)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 7 + y * 3) % 256, (x * y) % 251, (x * 13 + y * 29 + (x ^ y)) % 256], -1).astype(np.uint8)


def pil_resize(im: Image.Image, size) -> Image.Image:
    """The resize the released models saw: Pillow <= 12's, which is a plain resize there; on Pillow 13 the
    same passes in the same order (horizontal first), spelled out."""
    if PILLOW_MAJOR <= 12:
        return im.resize(size, BICUBIC)
    return im.resize((size[0], im.size[1]), BICUBIC).resize(size, BICUBIC)


def recompute(im: Image.Image, S: int, rows: int, cols: int) -> np.ndarray:
    """Straightforward re-computation: resize, crop each tile, then the global view; ToTensor + Normalize."""
    def norm(view):
        return ((np.asarray(view, np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)).transpose(2, 0, 1)

    big = pil_resize(im, (cols * S, rows * S))
    views = [big.crop((c * S, r * S, (c + 1) * S, (r + 1) * S)) for r in range(rows) for c in range(cols)]
    views.append(pil_resize(im, (S, S)))
    return np.stack([norm(v) for v in views])


# ------------------------------------------------------------------------------------------- grids

# docs/owl3.md §5.2, S = 384, computed there with the official code: (W, H) -> (rows, cols)
WORKED = [((500, 500), (2, 2)), ((1000, 500), (2, 3)), ((500, 1000), (3, 2)), ((1920, 1080), (2, 3)),
          ((800, 600), (2, 3)), ((640, 480), (2, 3)), ((1024, 768), (2, 3)), ((2000, 500), (1, 4)),
          ((500, 2000), (4, 1)), ((300, 100), (1, 3)), ((1200, 400), (1, 3))]


@pytest.mark.parametrize("size,grid", WORKED)
def test_worked_examples(size, grid):
    assert pre.select_grid(*size, 384, GRID_SQU_6) == grid


def _official_anchor_rank(w: int, h: int, S: int) -> tuple[int, int]:
    """anchor_rank of image_processing_mplugowl3.py, restated in torch with its dtypes (docs/owl3.md §5.2)."""
    torch = pytest.importorskip("torch")
    grid = GRID_SQU_6
    anchors = torch.tensor([[0, 0, c * S, r * S] for r, c in grid])                 # int64 xyxy

    def area(b):
        return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])

    def iou(b1, b2):
        lt = torch.max(b1[:, None, :2], b2[:, :2])
        rb = torch.min(b1[:, None, 2:], b2[:, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[:, :, 0] * wh[:, :, 1]
        return inter / (area(b1)[:, None] + area(b2) - inter + 1e-5)

    shape_box = anchors.clone()
    shape_box[:, 3] = h / w * anchors[:, 2]                        # float32 product, truncated into int64
    score = iou(anchors, shape_box).diag() * 100 + iou(anchors, torch.tensor([[0, 0, w, h]])).squeeze(1)
    return grid[int(torch.argmax(score))]


def test_grids_match_official_arithmetic():
    rng = np.random.default_rng(0)
    sizes = [(int(a), int(b)) for a, b in rng.integers(1, 6000, size=(300, 2))]
    sizes += [(int(a), int(b)) for a, b in np.exp(rng.uniform(0, 9, size=(200, 2))).astype(int) + 1]
    sizes += [(1, 1), (1, 5000), (5000, 1), (384, 384), (768, 768), (1152, 384), (384, 1536), (3, 1000)]
    for S in (384, 378, 30):
        for w, h in sizes:
            assert pre.select_grid(w, h, S, GRID_SQU_6) == _official_anchor_rank(w, h, S), (w, h, S)


# ------------------------------------------------------------------------------------------- pixels

@pytest.mark.parametrize("w,h,S", [(500, 300, 384), (300, 500, 378), (1920, 1080, 384), (90, 40, 384),
                                   (2000, 500, 378), (37, 700, 384), (64, 64, 30)])
def test_pixels_match_recomputation(w, h, S):
    im = Image.fromarray(synthetic(w, h))
    out = pre.preprocess_image(im, image_config(S))
    rows, cols = out.grid
    assert (rows, cols) == pre.select_grid(w, h, S, GRID_SQU_6)
    assert out.pixels.dtype == np.float32 and out.pixels.shape == (rows * cols + 1, 3, S, S)
    assert np.array_equal(out.pixels, recompute(im, S, rows, cols))
    assert out.pixels.min() >= -1 and out.pixels.max() <= 1


@pytest.mark.parametrize("mean,std", [((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
                                      ((0.5,) * 3, (0.5,) * 3), ((0.0, 1.0, 0.25), (1.0, 0.1, 3.0))])
def test_normalize_table_is_the_per_pixel_arithmetic_bit_for_bit(mean, std):
    """normalize() looks each byte up in a per-channel table; it must equal ToTensor + Normalize done per pixel
    in float32, every one of the 256 values of every channel and odd shapes included."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    x.reshape(-1)[:768] = np.arange(768) % 256        # (channel p % 3, value p % 256): every pair once
    want = ((x.astype(np.float32) / np.float32(255) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
    got = images.normalize(Image.fromarray(x), mean, std)
    assert got.dtype == np.float32 and got.shape == (3, 37, 53) and got.flags.c_contiguous
    assert np.array_equal(got.view(np.uint32), want.transpose(2, 0, 1).view(np.uint32))


# Pillow 12.0.0, im.resize((S, S), BICUBIC) of synthetic(w, h): width grows while height shrinks, the case
# Pillow 13 computes differently (docs/owl3.md §5.1). sha256 of the uint8 RGB bytes.
PILLOW12_DIGESTS = {
    (300, 500, 384): "4b079d552b3b2c2af76226aca9026978fa589661b8b4fb79f7b6f54453969051",
    (50, 900, 384): "3bad4afb59f5ea331e363d586943d3d29463b9e3e564b3aa349e00d4d9b3e2b6",
    (1000, 200, 378): "83467a0adfd7e5719e9cd2db1ff380e80fa8fefa9de4b031591a1debb77c8c84",
}


@pytest.mark.parametrize("key", sorted(PILLOW12_DIGESTS))
def test_resize_is_pillow12_bicubic(key):
    w, h, S = key
    out = np.asarray(images.resize(Image.fromarray(synthetic(w, h)), (S, S), "bicubic"))
    assert hashlib.sha256(out.tobytes()).hexdigest() == PILLOW12_DIGESTS[key]
    global_view = pre.preprocess_image(synthetic(w, h), image_config(S)).pixels[-1]
    assert np.array_equal(global_view, images.normalize(Image.fromarray(out), (0.5,) * 3, (0.5,) * 3))


def test_cut_disabled_and_variants():
    a = synthetic(640, 480)
    out = pre.preprocess_image(a, image_config(OFFICIAL_SIZE["241101"], "241101"), cut=False)
    assert out.grid is None and out.prompt == "<|image|>" and out.pixels.shape == (1, 3, 378, 378)
    assert np.array_equal(out.pixels, recompute(Image.fromarray(a), 378, 1, 1)[-1:])
    v2 = pre.preprocess_image(a, image_config(OFFICIAL_SIZE["240728"], "240728"))
    assert v2.pixels.shape == (7, 3, 384, 384) and v2.prompt.startswith("Cut to 2 rows 3 columns")   # 2 x 3 + global
    assert pre.preprocess_image(a, image_config(384, "241014")).prompt.startswith("<|start_cut|>2*3\n")


def test_prompt_templates():
    # docs/owl3.md §6.4, verbatim
    assert pre.cut_prompt(2, 2, "v2_global") == (
        "Cut to 2 rows 2 columns with a global view\nsubimg(0,0)<|image|> subimg(0,1)<|image|>\n"
        "subimg(1,0)<|image|> subimg(1,1)<|image|>\nglobal_view<|image|>")
    assert pre.cut_prompt(2, 3, "v3_global") == (
        "<|start_cut|>2*3\n<|image|> <|image|> <|image|>\n<|image|> <|image|> <|image|>\n<|image|><|end_cut|>")
    for rows, cols in GRID_SQU_6:
        for t in ("v2_global", "v3_global"):
            assert pre.cut_prompt(rows, cols, t).count("<|image|>") == rows * cols + 1
    with pytest.raises(ValueError, match="template"):
        pre.cut_prompt(2, 2, "v1")


# ------------------------------------------------------------------------------------------- modes

def _views(img, S=30):
    return pre.preprocess_image(img, image_config(S)).pixels


def test_rgba_drops_alpha_like_convert_rgb():
    rgb = synthetic(45, 30)
    alpha = (np.arange(45 * 30).reshape(30, 45, 1) % 256).astype(np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=2)
    assert np.array_equal(_views(Image.fromarray(rgba)), _views(rgb))      # the colour under alpha shows
    assert np.array_equal(_views(rgba), _views(rgb))                        # (H, W, 4) arrays too
    la = Image.fromarray(rgb[:, :, 0]).convert("LA")
    assert np.array_equal(_views(la), _views(Image.fromarray(rgb[:, :, 0]).convert("RGB")))


@pytest.mark.parametrize("mode", ["L", "P", "1", "CMYK", "YCbCr", "RGBX", "PA"])
def test_modes_follow_pillow_convert(mode):
    im = Image.fromarray(synthetic(40, 25)).convert(mode)
    assert np.array_equal(_views(im), _views(im.convert("RGB")))


@pytest.mark.parametrize("mode, straight", [("La", "LA"), ("RGBa", "RGBA")])
def test_premultiplied_alpha_modes_convert(mode, straight):
    """Pillow converts these only to their straight-alpha mode ("La" -> "RGB" used to raise; found by
    test_properties.py)."""
    a = np.concatenate([synthetic(40, 25), np.full((25, 40, 1), 128, np.uint8)], axis=2)
    im = Image.fromarray(a).convert(straight).convert(mode)
    assert np.array_equal(_views(im), _views(im.convert(straight).convert("RGB")))


def test_16_bit_images_scale_to_8_bits():
    v16 = (np.arange(40 * 25).reshape(25, 40) * 65).astype(np.uint16)        # 0 .. 64935
    expect8 = np.rint(v16 / 257.0).astype(np.uint8)
    want = _views(np.stack([expect8] * 3, -1))
    for mode in ("I;16", "I;16B"):
        im = Image.frombytes(mode, (40, 25), v16.astype("<u2" if mode == "I;16" else ">u2").tobytes())
        assert np.array_equal(_views(im), want), mode
    assert np.array_equal(_views(v16), want)                                  # uint16 numpy array
    assert np.array_equal(_views(np.stack([v16] * 3, -1)), want)


def test_numpy_layouts_and_bad_arrays():
    g = synthetic(40, 25)[:, :, 0]
    assert np.array_equal(_views(g), _views(np.stack([g] * 3, -1)))
    assert np.array_equal(_views(g[:, :, None]), _views(g))
    assert np.array_equal(_views(g > 100), _views(((g > 100) * 255).astype(np.uint8)))
    with pytest.raises(ValueError, match="uint8"):
        _views(g.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="H, W"):
        _views(np.zeros((4, 4, 2), np.uint8))


def test_files_bytes_and_errors(tmp_path):
    im = Image.fromarray(synthetic(50, 20))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    path = tmp_path / "a.png"
    path.write_bytes(buf.getvalue())
    want = _views(im)
    assert np.array_equal(_views(buf.getvalue()), want)
    assert np.array_equal(_views(str(path)), want) and np.array_equal(_views(path), want)
    with pytest.raises(FileNotFoundError):
        _views(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="cannot read"):
        _views(b"not an image at all")
    with pytest.raises(TypeError):
        _views(12345)


# ------------------------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("w,h", [(1, 1), (2, 1), (1, 3), (3, 1000), (1000, 2)])
def test_tiny_and_thin_images(w, h):
    a = np.full((h, w, 3), 200, np.uint8)
    out = pre.preprocess_image(a, image_config(30))
    assert out.pixels.shape[0] == out.grid[0] * out.grid[1] + 1
    assert np.allclose(out.pixels, 200 / 255 * 2 - 1, atol=1e-6)             # a flat image stays flat


def test_empty_image_is_an_error():
    with pytest.raises(ValueError, match="no pixels"):
        pre.preprocess_image(Image.new("RGB", (0, 5)), image_config(30))


def _png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels, with no pixel data: a decompression bomb in miniature."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_huge_images_are_refused_before_decoding():
    with pytest.raises(ValueError):
        pre.preprocess_image(_png_header(60000, 60000), image_config(384))         # 3.6 G pixels
    with pytest.raises(ValueError, match="over the limit"):
        pre.preprocess_image(_png_header(3000, 2000), image_config(384), max_pixels=5_000_000)
    # a thin image under the limit whose horizontal resize pass would not be: refused, not allocated
    with pytest.raises(ValueError, match="over the limit"):
        pre.preprocess_image(np.zeros((9000, 1, 3), np.uint8), image_config(384), max_pixels=1_000_000)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")     # Pillow's notice at open
def test_huge_files_are_refused_from_the_header_naming_file_and_limit(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    big.write_bytes(_png_header(13000, 13000))    # under Pillow's bomb limit: it used to be decoded (7 s, 0.9 GB)
    with pytest.raises(ValueError, match=r"big.png: image of 13000x13000 = 169000000 pixels is over the limit of "
                                         r"67108864.*owl_cpp.images.MAX_PIXELS"):
        pre.preprocess_image(big, image_config(378))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(60000, 60000))
    with pytest.raises(ValueError, match=r"bomb.png: .*exceeds limit of \d+ pixels"):
        pre.preprocess_image(bomb, image_config(378))
    monkeypatch.setattr(images, "MAX_PIXELS", 300)          # read at call time: the documented knob
    with pytest.raises(ValueError, match="over the limit of 300"):
        pre.preprocess_image(np.zeros((20, 20, 3), np.uint8), image_config(30))


def test_directories_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"{tmp_path}: is a directory"):
        pre.preprocess_image(tmp_path, image_config(30))
    buf = io.BytesIO()
    Image.fromarray(synthetic(64, 48)).save(buf, format="PNG")
    for name, data in [("cut.png", buf.getvalue()[:200]), ("junk.png", buf.getvalue()[:60] + b"\0" * 500)]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"{name}: cannot decode the image, the file is truncated or corrupt"):
            pre.preprocess_image(tmp_path / name, image_config(30))


def _smooth(w: int, h: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    return (np.stack([np.sin(6 * x), np.cos(5 * y), np.sin(4 * (x + y))], -1) * 120 + 128).astype(np.uint8)


def test_large_jpegs_are_decoded_at_reduced_scale(tmp_path):
    c = image_config(30)
    path = tmp_path / "big.jpg"
    Image.fromarray(_smooth(1200, 960)).save(path, quality=95)
    full = pre.preprocess_image(Image.open(path), c)         # a caller's PIL image: decoded in full
    drafted = pre.preprocess_image(path, c)                   # >= 4x the largest view: libjpeg at 1/4 here
    assert drafted.grid == full.grid and drafted.pixels.shape == full.pixels.shape
    assert not np.array_equal(drafted.pixels, full.pixels)
    assert np.abs(drafted.pixels - full.pixels).mean() < 0.01       # of a [-1, 1] range
    # the limit is on what is decoded: the drafted JPEG passes where the same PNG is refused
    assert pre.preprocess_image(path, c, max_pixels=200_000).grid == full.grid
    Image.fromarray(_smooth(1200, 960)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="over the limit"):
        pre.preprocess_image(tmp_path / "big.png", c, max_pixels=200_000)
    # a JPEG under 4x is decoded in full: the same bytes as from the caller's PIL image
    Image.fromarray(_smooth(200, 160)).save(tmp_path / "small.jpg", quality=95)
    assert np.array_equal(pre.preprocess_image(tmp_path / "small.jpg", c).pixels,
                          pre.preprocess_image(Image.open(tmp_path / "small.jpg"), c).pixels)


def test_no_torch_at_run_time():
    code = ("import sys\n"
            "from owl_cpp.families.owl3.image_config import ImagePreprocessing\n"
            "from owl_cpp.families.owl3.preprocess import preprocess_image\n"
            "import numpy as np\n"
            "c = ImagePreprocessing(30, (0.5,) * 3, (0.5,) * 3, 'bicubic', ((2, 2), (1, 3)), 'docowl', True, 'v3_global')\n"
            "preprocess_image(np.zeros((10, 20, 3), np.uint8), c)\n"
            "assert 'torch' not in sys.modules, 'preprocess imported torch'\n")
    package_parent = str(Path(images.__file__).resolve().parent.parent)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=package_parent)
