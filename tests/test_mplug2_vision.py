"""mPLUG-2's video encoder as vision.onnx (owl_export/mplug2/onnx_export.py) against the PyTorch reference's
encode_video, and the run-time video preprocessing (owl_cpp/families/mplug2/preprocess.py, numpy + Pillow)
against the reference's preprocess_frames / sample_frame_indices and torch's nearest interpolation.

The reference itself is checked against an independent NumPy model in test_mplug2_reference.py; here the
question is whether the traced graph and the numpy preprocessing reproduce it, for every frame count.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from owl_cpp import images  # noqa: E402
from owl_cpp.families.mplug2 import preprocess as pre  # noqa: E402
from owl_export.mplug2 import reference as R  # noqa: E402
from owl_export.mplug2.config import load_checkpoint  # noqa: E402
from owl_export.mplug2.fixtures import make_tiny_mplug2_checkpoint  # noqa: E402
from owl_export.mplug2.onnx_export import calibration_videos, export_video_encoder, random_frames  # noqa: E402
from owl_export.onnx_common import compare  # noqa: E402

FP32_REL = 1e-5           # measured ~5e-7 on the tiny model
INT8_COSINE = 0.999       # measured ~0.99996; a mis-quantized or mis-traced graph lands far below


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(sd, cfg, reference, {quant: (path, summary)}) for a tiny checkpoint, vision width = text width."""
    root = tmp_path_factory.mktemp("mplug2-vision")
    sd, cfg = load_checkpoint(make_tiny_mplug2_checkpoint(root / "ckpt", seed=11))
    out = {q: (root / f"vision-{q}.onnx", export_video_encoder(sd, cfg, root / f"vision-{q}.onnx", q))
           for q in ("none", "dynamic", "static")}
    return sd, cfg, R.Mplug2CaptionReference(sd, cfg), out


def _session(path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run(path, frames):
    return _session(path).run(["video_embeds"], {"pixel_values": frames})[0]


# ------------------------------------------------------------------------------------------- export

@pytest.mark.parametrize("T", [16, 4, 1])
def test_fp32_matches_reference(model, T):
    sd, cfg, ref, out = model
    frames = random_frames(cfg, T, seed=100 + T)
    got = _run(out["none"][0], frames)
    want = ref.encode_video(torch.from_numpy(frames)).numpy()
    assert got.shape == want.shape == (1 + T * cfg.tokens_per_frame, cfg.text_width)
    err = compare(got, want)
    assert err["rel_err"] < FP32_REL, err


@pytest.mark.parametrize("T", [16, 4, 1])
def test_int8_close_to_reference(model, T):
    sd, cfg, ref, out = model
    frames = random_frames(cfg, T, seed=200 + T)
    got = _run(out["dynamic"][0], frames)
    want = ref.encode_video(torch.from_numpy(frames)).numpy()
    assert got.shape == want.shape
    err = compare(got, want)
    assert err["cosine"] >= INT8_COSINE and err["rel_err"] < 0.05, err


def test_int8_is_quantized(model):
    out = model[3]
    ops = {n.op_type for n in onnx.load(str(out["dynamic"][0])).graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    assert out["dynamic"][1]["file_size"] < 0.7 * out["none"][1]["file_size"]


@pytest.mark.parametrize("T", [8, 2])
def test_static_int8_close_to_reference(model, T):
    """Static int8 (QDQ), calibrated on synthetic 4-frame videos: close to the reference on another synthetic
    video of T frames (a broken calibration lands far below: tests/test_vision_quant.py)."""
    sd, cfg, ref, out = model
    frames = calibration_videos(cfg, 1, T, first_seed=300)
    err = compare(_run(out["static"][0], frames), ref.encode_video(torch.from_numpy(frames)).numpy())
    assert err["cosine"] >= INT8_COSINE, err
    assert out["static"][1]["views_cosine_min"] >= INT8_COSINE
    ops = {n.op_type for n in onnx.load(str(out["static"][0])).graph.node}
    assert "QuantizeLinear" in ops and "DynamicQuantizeLinear" not in ops


def test_frames_are_mixed_in_time(model):
    """The temporal convolutions are in the graph: changing frame 2 moves its neighbour, frame 1, more than
    frame 0 (per-frame attention alone would leave both to the universal layers, equally)."""
    sd, cfg, ref, out = model
    frames = random_frames(cfg, 3, seed=7)
    a = _run(out["none"][0], frames)
    frames[2] = random_frames(cfg, 1, seed=8)[0]
    b = _run(out["none"][0], frames)
    P = cfg.tokens_per_frame
    frame0 = slice(1, 1 + P)                       # frame 0's patches; frame 2 is not its neighbour ...
    frame1 = slice(1 + P, 1 + 2 * P)               # ... but frame 1 is
    # the universal layers mix every token, so frame 0 moves too, but less than frame 1
    assert np.abs(a[frame1] - b[frame1]).mean() > np.abs(a[frame0] - b[frame0]).mean()


def test_interface_and_metadata(model):
    sd, cfg, ref, out = model
    for quant, (path, summary) in out.items():
        sess = _session(path)
        (inp,), (outp,) = sess.get_inputs(), sess.get_outputs()
        assert (inp.name, inp.shape) == ("pixel_values", ["T", 3, 224, 224])
        assert (outp.name, outp.shape) == ("video_embeds", ["video_tokens", cfg.text_width])
        meta = dict(sess.get_modelmeta().custom_metadata_map)
        assert {k: meta.get(k) for k in summary["metadata"]} == summary["metadata"]   # the quantizer adds one
        assert meta["owl.family"] == "mplug2" and meta["mplug2.vision.quant"] == quant
        assert meta["mplug2.vision.num_frames"] == str(cfg.num_frames)
        vc = pre.VideoConfig.from_metadata(meta)
        assert (vc.image_size, vc.tokens_per_frame, vc.embedding_length) == (224, 256, cfg.text_width)
        np.testing.assert_array_equal(np.float32(vc.mean), np.float32(R.CLIP_MEAN))
        np.testing.assert_array_equal(np.float32(vc.std), np.float32(R.CLIP_STD))


def test_metadata_errors(model):
    meta = model[3]["none"][1]["metadata"]
    for key, value, msg in [("owl.family", "owl2", "owl.family"), ("mplug2.vision.image_size", "0", "image_size"),
                            ("mplug2.vision.image_std", "1,0,1", "image_std"),
                            ("mplug2.vision.image_mean", "1,2", "image_mean"),
                            ("mplug2.vision.resize", "bicubic", "resize")]:
        with pytest.raises(ValueError, match=msg):
            pre.VideoConfig.from_metadata({**meta, key: value})
    with pytest.raises(ValueError, match="missing metadata mplug2.vision.num_frames"):
        pre.VideoConfig.from_metadata({k: v for k, v in meta.items() if k != "mplug2.vision.num_frames"})


def test_visn_fc_branch(tmp_path):
    """Vision width != text width: visn_fc + visn_layer_norm run before the universal layers."""
    sd, cfg = load_checkpoint(make_tiny_mplug2_checkpoint(tmp_path / "ckpt", seed=12, vision_width=128))
    assert cfg.has_visn_fc
    summary = export_video_encoder(sd, cfg, tmp_path / "vision.onnx")
    assert summary["rel_err"] < FP32_REL
    frames = random_frames(cfg, 2, seed=3)
    got = _run(tmp_path / "vision.onnx", frames)
    want = R.Mplug2CaptionReference(sd, cfg).encode_video(torch.from_numpy(frames)).numpy()
    assert got.shape == (1 + 2 * 256, 64) and compare(got, want)["rel_err"] < FP32_REL


def test_bad_quant(model, tmp_path):
    sd, cfg = model[:2]
    with pytest.raises(ValueError, match="unknown vision quant"):
        export_video_encoder(sd, cfg, tmp_path / "v.onnx", "int4")
    assert not (tmp_path / "v.onnx").exists()


# ------------------------------------------------------------------------------------------- preprocessing

@pytest.mark.parametrize("hw", [(37, 53), (300, 200), (224, 224), (112, 448), (1, 1), (225, 223), (719, 1283)])
def test_preprocess_matches_reference(hw):
    frames = np.random.default_rng(hw[0] * 7 + hw[1]).integers(0, 256, (3, *hw, 3), dtype=np.uint8)
    got = pre.preprocess_frames(frames)
    want = R.preprocess_frames(torch.from_numpy(frames)).numpy()
    assert got.dtype == np.float32 and got.shape == (3, 3, 224, 224)
    assert np.abs(got - want).max() < 1e-6
    np.testing.assert_array_equal(pre.preprocess_frames(list(frames)), got)      # a list of frames too


def test_nearest_index_is_torchs():
    """The source pixel of every output pixel, for many input/output sizes (2x, 1x, shrink, grow)."""
    for n_in in list(range(1, 80)) + [111, 112, 223, 225, 300, 448, 449, 1000, 1920]:
        for n_out in (224, 1, 7, 2 * n_in, n_in):
            ramp = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in)
            want = torch.nn.functional.interpolate(ramp, size=n_out, mode="nearest").view(-1).long().numpy()
            np.testing.assert_array_equal(pre.nearest_source_index(n_in, n_out), want, err_msg=f"{n_in}->{n_out}")


def test_sample_frame_indices_match_reference():
    for total in range(1, 300):
        for n in (1, 3, 4, 16, 32):
            assert pre.sample_frame_indices(total, n) == R.sample_frame_indices(total, n)
    assert pre.sample_frame_indices(30, 4) == [3, 11, 18, 25]
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            pre.sample_frame_indices(bad, 4)


def _colour(k):
    """30+ colours at least 70 apart in some channel: survive lossy video coding."""
    return np.array([20 + 70 * (k % 4), 20 + 70 * ((k // 4) % 4), 40 + 170 * (k // 16)], np.uint8)


def _which(frames, count):
    pal = np.stack([_colour(k) for k in range(count)]).astype(np.int64)
    return [int(np.abs(pal - f.reshape(-1, 3).mean(0)).sum(1).argmin()) for f in frames]


def test_frames_from_a_list(tmp_path):
    h, w = 21, 34
    arrays = [np.broadcast_to(_colour(k), (h, w, 3)).copy() for k in range(30)]
    for k in (0, 10, 20):                          # mixed kinds: paths and PIL images among the arrays
        Image.fromarray(arrays[k]).save(tmp_path / f"{k}.png")
    source = [tmp_path / f"{k}.png" if k % 10 == 0 else Image.fromarray(a) if k % 3 == 0 else a
              for k, a in enumerate(arrays)]
    for n in (16, 4, 40):
        got = pre.load_video_frames(source, n)
        assert got.dtype == np.uint8 and got.shape == (n, h, w, 3)
        idx = pre.sample_frame_indices(30, n)
        np.testing.assert_array_equal(got, np.stack([arrays[i] for i in idx]))
    np.testing.assert_array_equal(pre.load_video_frames(np.stack(arrays), 4), np.stack(arrays)[[3, 11, 18, 25]])


def test_bad_frame_lists(tmp_path):
    a, b = np.zeros((10, 12, 3), np.uint8), np.zeros((12, 10, 3), np.uint8)
    with pytest.raises(ValueError, match=r"one size: frame 0 is \(10, 12, 3\), frame 1 is \(12, 10, 3\)"):
        pre.load_video_frames([a, b], 2)
    with pytest.raises(ValueError, match="empty"):
        pre.load_video_frames([], 16)
    with pytest.raises(FileNotFoundError, match="frame 0: .*nope.png"):
        pre.load_video_frames([tmp_path / "nope.png"], 1)
    for n in (0, 10**6, 2.5):
        with pytest.raises(ValueError, match="number of frames"):
            pre.load_video_frames([a], n)
    with pytest.raises(ValueError, match="uint8"):
        pre.preprocess_frames(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        pre.preprocess_frames(np.zeros((1, 4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="no frames"):
        pre.preprocess_frames(np.zeros((0, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        pre.preprocess_frames(np.zeros((1, 0, 4, 3), np.uint8))
    with pytest.raises(TypeError, match="file path, a list of images"):
        pre.load_video_frames(42)


def test_absurd_frame_size(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(ValueError, match="100"):
        pre.preprocess_frames(np.zeros((1, 11, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="100"):
        pre.load_video_frames([np.zeros((11, 10, 3), np.uint8)], 1)


# ------------------------------------------------------------------------------------------- video files

def _write_video(av, path, codec, n=30, w=64, h=48):
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=10)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for k in range(n):
            frame = av.VideoFrame.from_ndarray(np.broadcast_to(_colour(k), (h, w, 3)).copy(), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.mark.parametrize("codec,ext", [("mpeg4", "mp4"), ("libx264", "mp4"), ("ffv1", "mkv")])
def test_frames_from_a_video_file(tmp_path, codec, ext):
    """30 frames of known colours; libx264 reorders frames (B-frames), so decode order != file order."""
    av = pytest.importorskip("av")
    if codec not in av.codecs_available:
        pytest.skip(f"PyAV here has no {codec} encoder")
    path = _write_video(av, tmp_path / f"clip.{ext}", codec)
    for n in (16, 4, 40):
        got = pre.load_video_frames(path, n, backend="av")
        assert got.dtype == np.uint8 and got.shape == (n, 48, 64, 3)
        assert _which(got, 30) == pre.sample_frame_indices(30, n)
        want = np.stack([_colour(k) for k in pre.sample_frame_indices(30, n)])[:, None, None, :]
        assert np.abs(got.astype(int) - want).max() <= 12           # lossy coding and YUV 4:2:0
    assert pre.load_video_frames(str(path), 16).shape == (16, 48, 64, 3)       # str and the default backend


def test_video_file_end_to_end(model, tmp_path):
    """Video file -> frames -> pixels -> vision.onnx equals the reference on the same frames."""
    av = pytest.importorskip("av")
    sd, cfg, ref, out = model
    frames = pre.load_video_frames(_write_video(av, tmp_path / "clip.mkv", "ffv1", n=9, w=40, h=30), 4)
    pixels = pre.preprocess_frames(frames)
    want = ref.encode_video(R.preprocess_frames(torch.from_numpy(frames))).numpy()
    assert compare(_run(out["none"][0], pixels), want)["rel_err"] < FP32_REL


def test_bad_video_files(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="missing.mp4: video file not found"):
        pre.load_video_frames(tmp_path / "missing.mp4")
    with pytest.raises(IsADirectoryError):
        pre.load_video_frames(tmp_path)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 50)
    with pytest.raises(ValueError, match="backend must be one of"):
        pre.load_video_frames(junk, backend="decord")
    av = pytest.importorskip("av")
    with pytest.raises(ValueError, match="junk.mp4: cannot open the video"):
        pre.load_video_frames(junk, backend="av")
    path = _write_video(av, tmp_path / "clip.mkv", "ffv1", n=3)
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(ValueError, match="clip.mkv: .*1000"):
        pre.load_video_frames(path, backend="av")


def test_no_video_backend(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)          # import av / cv2 raise ImportError
    monkeypatch.setitem(sys.modules, "cv2", None)
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 100)
    with pytest.raises(ImportError, match="pip install av"):
        pre.load_video_frames(tmp_path / "clip.mp4")
    frames = [np.full((5, 5, 3), k, np.uint8) for k in range(8)]  # a list of images needs neither
    assert pre.load_video_frames(frames, 2).shape == (2, 5, 5, 3)
