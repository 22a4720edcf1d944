"""What the runtime's Q8_0 / Q4_0 kernels compute, in float64: activations rounded to int8 blocks of 32 with
ggml's rule (d = amax / 127, q = roundf(x / d), d kept in fp32), as llama.cpp does, then exact products."""
import numpy as np


def quantized_activations(x):
    """ggml's Q8_0 rule in fp32 over the last axis (a multiple of 32): returns q * d in float64."""
    shape = x.shape
    xb = np.asarray(x, np.float32).reshape(-1, shape[-1] // 32, 32)
    d = (np.abs(xb).max(-1, keepdims=True) / np.float32(127)).astype(np.float32)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, np.float32(1)), np.float32(0)).astype(np.float32)
    v = (xb * inv).astype(np.float64)
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)  # roundf: half away from zero
    return (q * d.astype(np.float64)).reshape(shape)


def q8k_activations(x):
    """ggml's Q8_K rule (the activations of K-quant dot products) in fp32 over blocks of 256 of the last axis:
    the value of largest magnitude maps to -127 (iscale = -127/max), q = nearest_int(iscale * x) capped at 127,
    d = 1/iscale in fp32; returns q * d in float64."""
    shape = x.shape
    xb = np.asarray(x, np.float32).reshape(-1, 256)
    mx = np.take_along_axis(xb, np.abs(xb).argmax(-1)[:, None], -1)
    nz = mx != 0
    iscale = np.where(nz, np.float32(-127) / np.where(nz, mx, np.float32(1)), np.float32(0)).astype(np.float32)
    q = np.minimum(127, np.rint((iscale * xb).astype(np.float32)))
    d = np.where(nz, np.float32(1) / np.where(nz, iscale, np.float32(1)), np.float32(0)).astype(np.float32)
    return (q * d.astype(np.float64)).reshape(shape)
