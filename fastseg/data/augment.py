"""nnU-Net's default training augmentations as an NVIDIA DALI pipeline.

This is nnunetv2's `nnUNetTrainer.get_training_transforms` (batchgeneratorsv2 transforms), parameter for
parameter, in the same order, each drawn per sample:

    transform                       p               parameters
    spatial: rotation               0.2             an angle per axis ~ U(spec.rotation); 2D, dummy 2D: one, in-plane
    spatial: scaling                0.2             one factor for all axes ~ U(0.7, 1.4) (larger = smaller objects)
    (crop to the patch's centre)    always          seg padded with -1, image with 0
    gaussian noise                  0.1             std ~ U(0, 0.1), shared by the channels
    gaussian blur                   0.2             each channel with p 0.5, sigma ~ U(0.5, 1) per axis and channel
    multiplicative brightness       0.15            factor per channel ~ BGContrast(0.75, 1.25)
    contrast (preserve range)       0.15            factor per channel ~ BGContrast(0.75, 1.25)
    simulate low resolution         0.25            each channel with p 0.5, scale ~ U(0.5, 1) for all axes
    gamma, inverted, retain stats   0.1             gamma per channel ~ BGContrast(0.7, 1.5)
    gamma, retain stats             0.3             gamma per channel ~ BGContrast(0.7, 1.5)
    mirror                          0.5 per axis    over spec.mirror_axes
    mask image                      always          spec.mask_channels set to 0 where seg < 0 (use_mask_for_norm)
    remove label -1 -> 0            always

BGContrast(lo, hi) draws U(lo, 1) with probability 0.5 and U(1, hi) otherwise, so that shrinking and
growing are equally likely. Every tensor is channel-first as in nnU-Net: data (C, *spatial) float32,
seg (1, *spatial) int16, spatial axes `d, h, w` (3D) or `h, w` (2D), index 0 first.

The geometry of the spatial transform (batchgeneratorsv2's SpatialTransform with random_crop=False):
a voxel centre `x` of the output patch (size P, centred coordinates `x - P/2`) samples the input patch
(size S) at

    src = A (x - P/2) + S/2,    A = Rz(a2) Ry(a1) Rx(a0) * s       (3D; Rx rotates the h-w plane)
                                A = R(a) * s                         (2D; dummy 2D: on h, w, identity on d)

with pixel centres at k + 1/2. The image is sampled trilinearly with zeros outside, the segmentation by
its nearest neighbour with -1 outside. Samples with neither rotation nor scaling are cropped without
interpolation at `S // 2 - P // 2`, as batchgeneratorsv2's `crop_tensor` does.

On the CPU the training loader applies the spatial transform and the noise before DALI, natively, while
reading the patch from the memory-mapped case (fastseg.data.spatial, the same geometry and parameter
draws; `AugmentSpec.source_spatial`): DALI's CPU warp_affine costs ~78 ns an output voxel, the native
pass a fraction of that, and DALI never holds the larger initial patch. It then applies everything after
the noise natively too (fastseg.data.intensity, the same steps, order and parameter draws;
`AugmentSpec.source_intensity`): on 2D patches DALI's fixed cost per operator and batch (and the
conditionals' split and merge copies) outweighed the arithmetic, so the CPU loader's batches leave the
source finished and go to torch without a DALI graph (fastseg.data.loader). The graph below still does
all of it for the GPU path and for sources that deliver initial patches.

How it maps onto DALI. Channels are treated as frames (`FDHWC` with C = 1, or `FDHW`) so that every
per-channel parameter is a per-frame argument (`fn.per_frame`) and no transpose is needed: warp_affine
warps all frames with one matrix (spatial transform) or one matrix per frame (low resolution),
gaussian_blur takes a sigma and window per frame. Intensity transforms broadcast a (C, 1, 1[, 1]) factor.
Each augmentation is one small function; `random_augmentation` runs it on the samples whose coin
landed heads, through DALI conditionals, so the other samples skip the work. The brightness is the
exception: a multiplication is cheaper than the conditional's split and merge copies, so every sample is
multiplied, by 1 where its coin said no (measured: blur, contrast and gamma stay cheaper as conditionals).

Where this differs from batchgeneratorsv2 (all measured in tests/test_data_augment.py):
- The segmentation is warped by nearest neighbour, not by the argmax of per-label bilinear scores (which
  needs one warp per label; the label count is not known when the graph is built). They differ only on
  label borders (a few percent of the border voxels; >99% agreement on the tests' rotated and scaled
  patches); neither can produce a label that is not in the input (or -1 outside it).
- Low resolution (nearest-exact down to round(n * s), linear back up): equal to float rounding, except
  where (j + 1/2) * n / m is exactly an integer: torch's float32 product rounds that tie plane down
  in about 2% of (n, m) pairs, here it always goes up (see simulate_low_resolution).
- A degenerate range (v, v) always yields v, also for the BGContrast-drawn factors (batchgeneratorsv2's
  BGContrast would still draw from (v, 1) half of the time); this only serves to pin values in tests.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
from nvidia.dali import newaxis, pipeline_def
from nvidia.dali.pipeline import Pipeline

__all__ = [
    "DEFAULT_PROBABILITIES",
    "AugmentSpec",
    "build_augmentation_pipeline",
    "random_augmentation",
    "run_batches",
]

# nnunetv2's get_training_transforms. The "_per_channel" entries are the probability that a channel of a
# sample that drew the transform is changed; "mirror" is per allowed axis.
DEFAULT_PROBABILITIES: Mapping[str, float] = MappingProxyType({
    "rotation": 0.2,
    "scaling": 0.2,
    "noise": 0.1,
    "blur": 0.2,
    "blur_per_channel": 0.5,
    "brightness": 0.15,
    "contrast": 0.15,
    "lowres": 0.25,
    "lowres_per_channel": 0.5,
    "gamma_inverted": 0.1,
    "gamma": 0.3,
    "mirror": 0.5,
})

SEG_PAD = -1  # the label outside the input patch (nnU-Net's padding_value_seg), removed at the end
_GAMMA_EPS = 1e-7  # batchgeneratorsv2's GammaTransform: the floor of the range and of the std


def _pair(name: str, value) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ValueError(f"{name} must be a (low, high) range with low <= high, got {tuple(value)}")
    return lo, hi


@dataclass(frozen=True)
class AugmentSpec:
    """What to augment and how; the defaults past `augment` are nnU-Net's.

    Args:
        patch_size: the final patch, 2 or 3 spatial sizes (the input patches may be larger).
        rotation: (low, high) rotation angle in radians, drawn per rotated axis.
        dummy_2d: 3D patches augmented slice by slice (nnU-Net's dummy 2D for anisotropic data):
            rotation and scaling only in the (h, w) plane, low resolution leaves axis 0 alone.
        mirror_axes: spatial axes (0-based) that may be mirrored, each with p = probabilities["mirror"].
        augment: False gives validation batches: only the centre crop to `patch_size` and -1 -> 0.
        mask_channels: the channels nnU-Net normalized within the nonzero mask (its use_mask_for_norm):
            set to 0 where seg < 0 after augmenting (MaskImageTransform); default none. Indices past a
            sample's channel count are ignored.
        probabilities: overrides of DEFAULT_PROBABILITIES (e.g. {"blur": 1.0, "noise": 0.0}); None keeps
            nnU-Net's.
        scaling, noise_std, blur_sigma, brightness, contrast, lowres_scale, gamma: the (low, high) ranges
            of nnU-Net's transforms; (v, v) pins the value v.
        source_spatial: the source has already applied the spatial transform and the noise
            (`fastseg.data.spatial`, the CPU loader's native path) and delivers patches of `patch_size`:
            the pipeline starts at the blur (default False: the pipeline does both, from the initial
            patch).
        source_intensity: with source_spatial, the source has also applied everything after the noise
            (`fastseg.data.intensity`: blur to masking, and -1 -> 0): the pipeline passes its batches
            through (default False).
    """

    patch_size: tuple
    rotation: tuple[float, float]
    dummy_2d: bool
    mirror_axes: tuple[int, ...]
    augment: bool = True
    mask_channels: tuple[int, ...] = ()
    probabilities: Mapping[str, float] | None = None
    scaling: tuple[float, float] = (0.7, 1.4)
    noise_std: tuple[float, float] = (0.0, 0.1)
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    brightness: tuple[float, float] = (0.75, 1.25)
    contrast: tuple[float, float] = (0.75, 1.25)
    lowres_scale: tuple[float, float] = (0.5, 1.0)
    gamma: tuple[float, float] = (0.7, 1.5)
    source_spatial: bool = False
    source_intensity: bool = False

    def __post_init__(self):
        patch = tuple(int(s) for s in self.patch_size)
        if len(patch) not in (2, 3) or min(patch) < 1:
            raise ValueError(f"patch_size must be 2 or 3 positive sizes, got {self.patch_size}")
        object.__setattr__(self, "patch_size", patch)
        if self.source_intensity and not self.source_spatial:
            raise ValueError("source_intensity needs source_spatial (the source applies the spatial transform first)")
        if self.dummy_2d and len(patch) != 3:
            raise ValueError(f"dummy_2d needs a 3D patch_size, got {patch}")
        axes = tuple(int(a) for a in self.mirror_axes)
        if any(not 0 <= a < len(patch) for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"mirror_axes must be distinct spatial axes in [0, {len(patch)}), got {self.mirror_axes}")
        object.__setattr__(self, "mirror_axes", axes)
        masked = tuple(sorted({int(c) for c in self.mask_channels}))
        if masked and masked[0] < 0:
            raise ValueError(f"mask_channels must be channel indices >= 0, got {self.mask_channels}")
        object.__setattr__(self, "mask_channels", masked)
        for name in ("rotation", "scaling", "noise_std", "blur_sigma", "brightness", "contrast",
                     "lowres_scale", "gamma"):
            object.__setattr__(self, name, _pair(name, getattr(self, name)))
        if self.blur_sigma[0] <= 0 or self.scaling[0] <= 0:
            raise ValueError(f"blur_sigma and scaling must be positive, got {self.blur_sigma}, {self.scaling}")
        if not 0.5 <= self.lowres_scale[0] <= self.lowres_scale[1] <= 1.0:
            raise ValueError("lowres_scale must lie in [0.5, 1] (the downsampled volume must keep at least half "
                             f"of each axis, see simulate_low_resolution), got {self.lowres_scale}")
        if self.noise_std[0] < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        for name, p in (self.probabilities or {}).items():
            if name not in DEFAULT_PROBABILITIES:
                close = difflib.get_close_matches(name, DEFAULT_PROBABILITIES, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown augmentation {name!r} in probabilities; expected one of "
                                 f"{sorted(DEFAULT_PROBABILITIES)}{hint}")
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"probability of {name!r} must be in [0, 1], got {p}")
        if self.probabilities is not None:  # a read-only copy: the caller's dict cannot change a frozen spec
            object.__setattr__(self, "probabilities",
                               MappingProxyType({k: float(v) for k, v in self.probabilities.items()}))

    def __hash__(self):
        values = [getattr(self, f.name) for f in fields(self)]
        return hash(tuple(tuple(sorted(v.items())) if isinstance(v, Mapping) else v for v in values))

    def probability(self, name: str) -> float:
        """The probability in force for `name` (override or nnU-Net's default)."""
        return float((self.probabilities or {}).get(name, DEFAULT_PROBABILITIES[name]))


# --- random parameters -------------------------------------------------------------------------------

def _coin(probability: float, shape=None):
    """Per sample (or per element of `shape`): True with `probability`."""
    return fn.random.coin_flip(probability=probability, shape=shape, dtype=types.BOOL)


def _flag(condition):
    """A boolean node as float 0. / 1. (selecting by arithmetic: 1 * a + 0 * b is exactly a)."""
    return fn.cast(condition, dtype=types.FLOAT)


def _uniform(low: float, high: float, shape=None):
    """U(low, high) per sample or of `shape`; (v, v) gives v, like batchgeneratorsv2's sample_scalar."""
    if low == high:
        return fn.random.uniform(range=[0.0, 1.0], shape=shape) * 0.0 + low
    return fn.random.uniform(range=[low, high], shape=shape)


def _bg_contrast(low: float, high: float, shape=None):
    """batchgeneratorsv2's BGContrast: U(low, 1) with probability 0.5 (if low < 1), else U(max(low, 1), high)."""
    if low == high:
        return _uniform(low, high, shape)
    u = fn.random.uniform(range=[0.0, 1.0], shape=shape)
    mid = max(low, 1.0)
    above = mid + u * (high - mid)
    if low >= 1.0:
        return above
    below = low + u * (1.0 - low)
    pick_below = _flag(_coin(0.5, shape))
    return pick_below * below + (1.0 - pick_below) * above


def random_augmentation(probability: float, augmented: Callable, original, *, only_if=None):
    """Per sample: `augmented(original)` with `probability`, else `original` unchanged.

    A DALI conditional on `fn.random.coin_flip`: only the samples that drew the augmentation run it.
    `only_if` (a boolean node per sample) further restricts it, e.g. to samples where some channel was
    chosen, since for the others the augmentation is the identity. With probability 0 the augmentation
    is left out of the graph.
    """
    if probability <= 0.0:
        return original
    condition = _coin(probability)
    if only_if is not None:
        condition = condition & only_if
    if condition:
        result = augmented(original)
    else:
        result = original
    return result


# --- layouts ---------------------------------------------------------------------------------------------

def _layout(ndim: int) -> str:
    return "CDHW" if ndim == 3 else "CHW"


def _frames(x, ndim: int, channel_last: bool):
    """(C, *spatial) viewed as C frames: FDHWC / FHWC (a trailing channel of 1) or FDHW / FHW."""
    spatial = "DHW" if ndim == 3 else "HW"
    if channel_last:
        return fn.reshape(fn.expand_dims(x, axes=[ndim + 1], new_axis_names="C"), layout="F" + spatial + "C")
    return fn.reshape(x, layout="F" + spatial)


def _unframe(x, ndim: int, channel_last: bool):
    if channel_last:
        x = fn.squeeze(x, axes=[ndim + 1])
    return fn.reshape(x, layout=_layout(ndim))


def _to(node, device: str):
    """A CPU parameter node where the data lives."""
    return node.gpu() if device == "gpu" else node


def _per_channel(values, ndim: int):
    """(C,) -> (C, 1, 1[, 1]) for broadcasting against (C, *spatial)."""
    return values[(slice(None),) + (newaxis,) * ndim]


# --- spatial: rotation, scaling, centre crop -------------------------------------------------------------

def _matmul(a, b):
    """Product of two small matrices (nested lists) whose entries are DALI nodes or Python numbers."""
    def dot(row, col):
        terms = [x * y for x, y in zip(row, col) if not (_is_zero(x) or _is_zero(y))]
        return sum(terms[1:], terms[0]) if terms else 0.0
    return [[dot(row, col) for col in zip(*b)] for row in a]


def _is_zero(x) -> bool:
    return isinstance(x, (int, float)) and x == 0


def _rotation_2d(angle):
    c, s = dmath.cos(angle), dmath.sin(angle)
    return [[c, -s], [s, c]]


def spatial_matrix_entries(angles, scale, ndim: int, dummy_2d: bool):
    """The matrix A (nested lists) of batchgeneratorsv2's create_affine_matrix_{2,3}d for one sample.

    `angles`: 3 angles (a0, a1, a2) for 3D, 1 in-plane angle for 2D and dummy 2D. Rows and columns are
    in array-axis order (d, h, w); A maps output offsets from the patch centre to input offsets.
    """
    if ndim == 2:
        rot = _rotation_2d(angles[0])
    elif dummy_2d:
        (c, minus_s), (s, _) = _rotation_2d(angles[0])
        rot = [[1.0, 0.0, 0.0], [0.0, c, minus_s], [0.0, s, c]]
    else:
        c0, s0 = dmath.cos(angles[0]), dmath.sin(angles[0])
        c1, s1 = dmath.cos(angles[1]), dmath.sin(angles[1])
        c2, s2 = dmath.cos(angles[2]), dmath.sin(angles[2])
        rx = [[1.0, 0.0, 0.0], [0.0, c0, -s0], [0.0, s0, c0]]
        ry = [[c1, 0.0, s1], [0.0, 1.0, 0.0], [-s1, 0.0, c1]]
        rz = [[c2, -s2, 0.0], [s2, c2, 0.0], [0.0, 0.0, 1.0]]
        rot = _matmul(_matmul(rz, ry), rx)
    scaled_axes = range(1, 3) if dummy_2d else range(ndim)
    scales = [[(scale if (i == j and i in scaled_axes) else (1.0 if i == j else 0.0)) for j in range(ndim)]
              for i in range(ndim)]
    return _matmul(rot, scales)


def _warp_matrix(a, input_size, patch_size):
    """DALI's destination-to-source matrix (ndim, ndim + 1), in its x-first axis order, of src = A (x - P/2) + S/2."""
    ndim = len(patch_size)
    const = lambda v: types.Constant(float(v), dtype=types.FLOAT, device="cpu")  # noqa: E731
    rows = []
    for r in range(ndim):
        i = ndim - 1 - r  # DALI's row r is array axis i
        row = [a[i][ndim - 1 - c] for c in range(ndim)]
        shift = input_size[i] * 0.5
        for j in range(ndim):
            if not _is_zero(a[i][j]):
                shift = shift - a[i][j] * (patch_size[j] * 0.5)
        rows.extend(row + [shift])
    entries = [e if not isinstance(e, (int, float)) else const(e) for e in rows]
    return fn.reshape(fn.stack(*entries), shape=[ndim, ndim + 1])


def _centre_crop(x, input_shape, patch_size, fill: float):
    """batchgeneratorsv2's crop_tensor about floor(S / 2): start S // 2 - P // 2, padded with `fill`."""
    ndim = len(patch_size)
    start = input_shape[1:] // 2 - types.Constant(np.array(patch_size, np.int32) // 2, device="cpu")
    return fn.slice(x, start, types.Constant(np.array(patch_size, np.int32), device="cpu"),
                    axes=list(range(1, ndim + 1)), out_of_bounds_policy="pad", fill_values=fill)


def _warp(x, matrix, patch_size, *, linear: bool, fill: float | None, per_frame: bool = False):
    ndim = len(patch_size)
    return _unframe(fn.warp_affine(
        _frames(x, ndim, channel_last=True),
        matrix=fn.per_frame(matrix) if per_frame else matrix,
        size=list(patch_size),
        fill_value=fill,
        interp_type=types.INTERP_LINEAR if linear else types.INTERP_NN,
    ), ndim, channel_last=True)


def spatial_transform(data, seg, input_shape, spec: AugmentSpec):
    """SpatialTransform(p_rotation, p_scaling, synchronized scaling, centre crop, seg border -1)."""
    ndim = len(spec.patch_size)
    p_rot, p_scale = spec.probability("rotation"), spec.probability("scaling")
    if p_rot <= 0.0 and p_scale <= 0.0:
        return (_centre_crop(data, input_shape, spec.patch_size, 0.0),
                _centre_crop(seg, input_shape, spec.patch_size, float(SEG_PAD)))
    rotate, scale = _coin(p_rot), _coin(p_scale)
    if rotate | scale:
        n_angles = 3 if ndim == 3 and not spec.dummy_2d else 1
        angles = [_uniform(*spec.rotation) * _flag(rotate) for _ in range(n_angles)]
        factor = (_uniform(*spec.scaling) - 1.0) * _flag(scale) + 1.0
        size = [fn.cast(input_shape[i + 1], dtype=types.FLOAT) for i in range(ndim)]
        matrix = _warp_matrix(spatial_matrix_entries(angles, factor, ndim, spec.dummy_2d), size, spec.patch_size)
        data = _warp(data, matrix, spec.patch_size, linear=True, fill=0.0)
        seg = _warp(seg, matrix, spec.patch_size, linear=False, fill=float(SEG_PAD))
    else:
        data = _centre_crop(data, input_shape, spec.patch_size, 0.0)
        seg = _centre_crop(seg, input_shape, spec.patch_size, float(SEG_PAD))
    return data, seg


# --- intensity -----------------------------------------------------------------------------------------

def gaussian_noise(data, std_range, device: str):
    """GaussianNoiseTransform(noise_variance=std_range, synchronize_channels=True): one std per sample
    (batchgeneratorsv2 uses the drawn 'variance' as the standard deviation)."""
    std = _to(_uniform(*std_range), device)
    return data + fn.random.normal(data) * std


def _any(chosen):
    """Whether any entry of a boolean (C,) node is set, per sample."""
    return fn.reductions.max(fn.cast(chosen, dtype=types.INT32)) > 0


def gaussian_blur(data, channels, chosen, sigma_range, ndim: int):
    """GaussianBlurTransform(sigma per axis and channel) on the `chosen` channels (boolean (C,)): a
    separable Gaussian with batchgeneratorsv2's window (the odd integer nearest to 6 sigma + 0.5) and
    mirrored borders; the other channels get a window of 1."""
    shape = fn.cat(channels, types.Constant(np.array([ndim], np.int32), device="cpu"))
    sigma = _uniform(*sigma_range, shape=shape)
    window = dmath.floor(sigma * 3.0 + 0.25) * 2.0 + 1.0
    window = fn.cast((window - 1.0) * _per_channel(_flag(chosen), 1) + 1.0, dtype=types.INT32)
    blurred = fn.gaussian_blur(_frames(data, ndim, channel_last=False),
                               sigma=fn.per_frame(sigma), window_size=fn.per_frame(window))
    return _unframe(blurred, ndim, channel_last=False)


def multiplicative_brightness(data, channels, multiplier_range, ndim: int, device: str, drawn=None):
    """MultiplicativeBrightnessTransform(BGContrast(multiplier_range)), a factor per channel; `drawn` (a
    boolean node per sample, optional): the factor is 1 where it is False (the identity, exactly)."""
    factor = _bg_contrast(*multiplier_range, shape=channels)
    if drawn is not None:
        factor = (factor - 1.0) * _flag(drawn) + 1.0
    return data * _to(_per_channel(factor, ndim), device)


def contrast(data, channels, contrast_range, ndim: int, device: str):
    """ContrastTransform(BGContrast(contrast_range), preserve_range=True), a factor per channel:
    (x - mean) * factor + mean, clipped to the channel's former [min, max]."""
    factor = _to(_per_channel(_bg_contrast(*contrast_range, shape=channels), ndim), device)
    axes = list(range(1, ndim + 1))
    mean = fn.reductions.mean(data, axes=axes, keep_dims=True)
    low = fn.reductions.min(data, axes=axes, keep_dims=True)
    high = fn.reductions.max(data, axes=axes, keep_dims=True)
    return dmath.min(dmath.max((data - mean) * factor + mean, low), high)


def _round_half_even(x):
    """Python's round(): to the nearest integer, ties to the even one."""
    r = dmath.floor(x + 0.5)
    tie = _flag(r - x == 0.5)
    odd = r - dmath.floor(r * 0.5) * 2.0
    return r - tie * odd


def _low_resolution_sizes(scale, patch_size, ignore_axes):
    """m = round(n * s) per axis (n for ignored axes) for a scale node of any shape, in array-axis order."""
    return [scale * 0.0 + float(n) if i in ignore_axes else _round_half_even(scale * float(n))
            for i, n in enumerate(patch_size)]


def simulate_low_resolution(data, input_shape, chosen, scale_range, patch_size, ignore_axes):
    """SimulateLowResolutionTransform(synchronize_axes=True) on the `chosen` channels (boolean (C,)):
    per channel a scale s; nearest-exact downsampling to m = round(n * s) voxels per axis, then linear
    upsampling back (align_corners=False). Single-channel samples take two `fn.resize` (5x faster on
    the CPU); the others `_low_resolution_per_channel`. Nearest-exact takes floor((j + 1/2) * n / m);
    where that product is an integer k (a tie, e.g. n = 24, m = 19, j = 9) float rounding decides, so
    the source is shifted by 1/(4m) (less than the 1/(2m) to the nearest non-tie): ties go to k on every
    backend. torch's float32 product does the same in about 98% of (n, m) pairs (all sizes to 400) and
    otherwise rounds one tie plane down.
    """
    scale = _uniform(*scale_range, shape=input_shape[0:1])
    scale = (scale - 1.0) * _flag(chosen) + 1.0
    if input_shape[0] == 1:
        sizes = _low_resolution_sizes(scale, patch_size, ignore_axes)
        size = fn.cat(*sizes)
        shift = 0.25 / size
        down = fn.resize(data, size=size, roi_start=shift, roi_end=shift + types.Constant(
            np.array(patch_size, np.float32), device="cpu"), interp_type=types.INTERP_NN, antialias=False)
        result = fn.resize(down, size=list(patch_size), interp_type=types.INTERP_LINEAR, antialias=False)
    else:
        result = _low_resolution_per_channel(data, scale, patch_size, ignore_axes)
    return result


def _low_resolution_per_channel(data, scale, patch_size, ignore_axes):
    """Low resolution with a scale per channel ((C,) node), channels as frames.

    Both steps are warp_affine with one matrix per channel: the downsampled volume is written to the
    first m = round(n * s) voxels of a full-size canvas (src = x * n / m, nearest), then read back
    (src = x * m / n, linear, borders clamped). The canvas voxel just past the volume repeats its last
    voxel (clamped source, as m >= n / 2), which is what the upsampling's clamp at m - 1 needs. (The one
    exception: s = 0.5 exactly on an odd n, rounded to the even m < n / 2; there the last voxels blend
    with one further voxel of the input.)
    """
    ndim = len(patch_size)
    zero = scale * 0.0
    sizes = _low_resolution_sizes(scale, patch_size, ignore_axes)
    down, up = [], []
    for r in range(ndim):
        i = ndim - 1 - r  # DALI's row r is array axis i
        n, m = float(patch_size[i]), sizes[i]
        for c in range(ndim):
            down.append(n / m if c == r else zero)
            up.append(m / n if c == r else zero)
        down.append(0.25 / m)  # ties go to k (see simulate_low_resolution)
        up.append(zero)
    down = fn.reshape(fn.stack(*down, axis=1), shape=[-1, ndim, ndim + 1])
    up = fn.reshape(fn.stack(*up, axis=1), shape=[-1, ndim, ndim + 1])
    canvas = _warp(data, down, patch_size, linear=False, fill=None, per_frame=True)
    return _warp(canvas, up, patch_size, linear=True, fill=None, per_frame=True)


def gamma(data, channels, gamma_range, invert: bool, ndim: int, device: str):
    """GammaTransform(BGContrast(gamma_range), p_invert_image in {0, 1}, p_retain_stats=1), per channel:

        x -> -x (inverted);  x -> ((x - min) / max(max - min, 1e-7)) ** g * (max - min) + min;
        then back to the former mean and (unbiased) std;  x -> -x (inverted).
    """
    g = _to(_per_channel(_bg_contrast(*gamma_range, shape=channels), ndim), device)
    axes = list(range(1, ndim + 1))
    x = data * -1.0 if invert else data
    mean = fn.reductions.mean(x, axes=axes, keep_dims=True)
    std = fn.reductions.std_dev(x, mean, axes=axes, keep_dims=True, ddof=1)
    low = fn.reductions.min(x, axes=axes, keep_dims=True)
    extent = fn.reductions.max(x, axes=axes, keep_dims=True) - low
    y = dmath.pow((x - low) / dmath.max(extent, _GAMMA_EPS), g) * extent + low
    new_mean = fn.reductions.mean(y, axes=axes, keep_dims=True)
    new_std = fn.reductions.std_dev(y, new_mean, axes=axes, keep_dims=True, ddof=1)
    y = (y - new_mean) * (std / dmath.max(new_std, _GAMMA_EPS)) + mean
    return y * -1.0 if invert else y


def mirror(data, seg, axes: Sequence[int], probability: float, ndim: int):
    """MirrorTransform(allowed_axes): each allowed axis flipped with `probability`, data and seg alike."""
    if not axes or probability <= 0.0:
        return data, seg
    names = ("depthwise", "vertical", "horizontal")[3 - ndim:]  # DALI's names of d, h, w
    flips = {name: 0 for name in names}
    for axis in axes:
        flips[names[axis]] = fn.cast(_coin(probability), dtype=types.INT32)
    return fn.flip(data, **flips), fn.flip(seg, **flips)


def mask_image(data, seg, channels, mask_channels: Sequence[int], ndim: int, device: str):
    """MaskImageTransform(apply_to_channels=mask_channels, set_outside_to=0): those channels are 0 where
    seg < 0 (outside the nonzero mask nnU-Net normalized within, and outside the input patch)."""
    if not mask_channels:
        return data
    selected = np.zeros(max(mask_channels) + 1, np.float32)
    selected[list(mask_channels)] = 1.0
    selected = fn.slice(types.Constant(selected, device="cpu"), types.Constant(np.zeros(1, np.int32), device="cpu"),
                        channels, axes=[0], out_of_bounds_policy="pad", fill_values=0.0)  # length C
    outside = fn.cast(seg < 0, dtype=types.FLOAT)
    return data * (1.0 - _to(_per_channel(selected, ndim), device) * outside)


def remove_label(seg, label: int = SEG_PAD, replacement: int = 0):
    """RemoveLabelTansform(label, replacement)."""
    keep = fn.cast(seg != label, dtype=types.INT16)
    if replacement == 0:
        return seg * keep
    return fn.cast(seg * keep + (1 - keep) * replacement, dtype=types.INT16)


# --- the pipeline ----------------------------------------------------------------------------------------

def _augment(data, seg, input_shape, spec: AugmentSpec, device: str):
    ndim = len(spec.patch_size)
    channels = input_shape[0:1]
    p = spec.probability
    if not spec.source_spatial:
        data, seg = spatial_transform(data, seg, input_shape, spec)
        data = random_augmentation(p("noise"), lambda x: gaussian_noise(x, spec.noise_std, device), data)
    blur_channels = _coin(p("blur_per_channel"), channels)
    data = random_augmentation(p("blur"), lambda x: gaussian_blur(x, channels, blur_channels, spec.blur_sigma, ndim),
                               data, only_if=_any(blur_channels))
    if p("brightness") > 0.0:  # one multiplication of every sample, by 1 where the coin says no: cheaper than
        # a conditional's split and merge (3d_fullres: 28 against 40 ms a batch, 2d: 7 against 17)
        data = multiplicative_brightness(data, channels, spec.brightness, ndim, device, drawn=_coin(p("brightness")))
    data = random_augmentation(p("contrast"), lambda x: contrast(x, channels, spec.contrast, ndim, device), data)
    ignore_axes = (0,) if spec.dummy_2d else ()
    lowres_channels = _coin(p("lowres_per_channel"), channels)
    data = random_augmentation(p("lowres"), lambda x: simulate_low_resolution(
        x, input_shape, lowres_channels, spec.lowres_scale, spec.patch_size, ignore_axes),
        data, only_if=_any(lowres_channels))
    data = random_augmentation(
        p("gamma_inverted"), lambda x: gamma(x, channels, spec.gamma, True, ndim, device), data)
    data = random_augmentation(p("gamma"), lambda x: gamma(x, channels, spec.gamma, False, ndim, device), data)
    data, seg = mirror(data, seg, spec.mirror_axes, p("mirror"), ndim)
    return mask_image(data, seg, channels, spec.mask_channels, ndim, device), seg


def _checked_source(source, ndim: int, batch_size: int, patch_size: tuple | None = None):
    """`source` wrapped to check each batch: as many data as seg arrays (1..batch_size), data with `ndim`
    spatial axes, seg (1, *data's spatial shape), and with `patch_size` given, that spatial shape. A
    mismatch would otherwise warp misaligned silently."""
    if not callable(source) or inspect.isgeneratorfunction(source):
        return source

    def check(batch):
        data, seg = batch
        if not 1 <= len(data) <= batch_size or len(seg) != len(data):
            raise ValueError(f"source must return 1..{batch_size} data and as many seg arrays, "
                             f"got {len(data)} and {len(seg)}")
        for i, (d, g) in enumerate(zip(data, seg)):
            if len(d.shape) != ndim + 1 or tuple(g.shape) != (1, *d.shape[1:]):
                raise ValueError(f"sample {i}: expected data (C, {ndim} spatial sizes) and seg (1, same sizes), "
                                 f"got data {tuple(d.shape)} and seg {tuple(g.shape)}")
            if patch_size is not None and tuple(d.shape[1:]) != patch_size:
                raise ValueError(f"sample {i}: a source that applies the spatial transform must deliver the final "
                                 f"patch {patch_size}, got data {tuple(d.shape)}")
        return data, seg

    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind in positional for p in inspect.signature(source).parameters.values()):
        return lambda info: check(source(info))  # DALI passes batch info to a callable with an argument
    return lambda: check(source())


@pipeline_def(enable_conditionals=True)
def _augmentation_pipeline(source, spec: AugmentSpec, device: str):
    ndim = len(spec.patch_size)
    data, seg = fn.external_source(source=source, num_outputs=2, batch=True,
                                   dtype=[types.FLOAT, types.INT16], layout=[_layout(ndim)] * 2)
    input_shape = data.shape(dtype=types.INT32)  # (C, *initial patch), on the CPU
    if spec.source_intensity:
        return data, seg  # the source's batches are final (fastseg.data.intensity)
    if device == "gpu":
        data, seg = data.gpu(), seg.gpu()
    if spec.augment:
        data, seg = _augment(data, seg, input_shape, spec, device)
    elif not spec.source_spatial:
        data = _centre_crop(data, input_shape, spec.patch_size, 0.0)
        seg = _centre_crop(seg, input_shape, spec.patch_size, float(SEG_PAD))
    return data, remove_label(seg)


def build_augmentation_pipeline(
    source: Callable[[], tuple[list[np.ndarray], list[np.ndarray]]],
    spec: AugmentSpec,
    batch_size: int,
    *,
    num_threads: int = 2,
    device_id: int | None = None,
    seed: int = 0,
    prefetch_queue_depth: int = 2,
) -> Pipeline:
    """A built DALI pipeline that augments the batches `source` returns, like nnU-Net's training transforms.

    Args:
        source: called once per batch (with the iteration index if it takes an argument, as DALI's
            external_source calls it); returns (data, seg): lists of `batch_size` arrays, data float32
            (C, *initial_patch) and seg int16 (1, *initial_patch), channel-first, spatial dims as in
            `spec.patch_size`. The initial patch may be larger than the final one (room for rotation
            and scaling) or smaller (padded).
        spec: the augmentations (see AugmentSpec).
        batch_size: samples per batch (> 0).
        num_threads: DALI CPU worker threads (default 2).
        device_id: None runs everything on DALI's CPU operators; a CUDA device index moves the data to
            that GPU right after the source and augments it there (default None).
        seed: the pipeline's seed; the same seed and inputs give the same batches (default 0).
        prefetch_queue_depth: batches DALI prepares ahead (default 2).

    Returns:
        The pipeline; its outputs are data float32 (C, *patch_size) and seg int16 (1, *patch_size) with
        -1 replaced by 0, per sample (see `run_batches`).
    """
    if not isinstance(spec, AugmentSpec):
        raise TypeError(f"spec must be an AugmentSpec, got {type(spec).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    if prefetch_queue_depth < 1:
        raise ValueError(f"prefetch_queue_depth must be >= 1, got {prefetch_queue_depth}")
    device = "cpu" if device_id is None else "gpu"
    pipe = _augmentation_pipeline(
        _checked_source(source, len(spec.patch_size), batch_size, spec.patch_size if spec.source_spatial else None), spec, device, batch_size=batch_size, num_threads=num_threads, device_id=device_id,
        seed=seed, prefetch_queue_depth=prefetch_queue_depth)
    pipe.build()
    return pipe


def run_batches(pipe: Pipeline) -> tuple[np.ndarray, np.ndarray]:
    """Run `pipe` once: (data (B, C, *patch_size) float32, seg (B, 1, *patch_size) int16) as numpy."""
    data, seg = (out.as_cpu() if hasattr(out, "as_cpu") else out for out in pipe.run())
    return np.array(data.as_array()), np.array(seg.as_array())
