"""Video dataset loaders on tiny fixture trees in the official layouts (adafocus.datasets.video_sets)."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from _video_fixtures import COUNTER_STEP, write_counter_video
from adafocus.datasets.video import VideoDecodeError
from adafocus.datasets.video_sets import RLVS, ClassFolderVideos, Diving48, find_rlvs_root, make_or_load_split
from torch.utils.data import DataLoader


@pytest.fixture(scope="module")
def template_videos(tmp_path_factory) -> dict[str, Path]:
    """One small clip per container, copied into each tree (encoding once keeps the tests fast)."""
    folder = tmp_path_factory.mktemp("templates")
    return {
        ".mp4": write_counter_video(folder / "t.mp4", 24, height=36, width=48),
        ".avi": write_counter_video(folder / "t.avi", 24, height=36, width=48),
        "long.mp4": write_counter_video(folder / "long.mp4", 60, height=36, width=48),
    }


def _place(template: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, path)
    return path


def _levels(clip: torch.Tensor) -> list[int]:
    """Counter frame numbers of a [T, 3, S, S] clip."""
    return (clip.mean(dim=(1, 2, 3)) * 255 / COUNTER_STEP).round().int().tolist()


# ---------------------------------------------------------------------------------------------- class folders


def test_class_folder_tree(tmp_path, template_videos):
    mp4, avi = template_videos[".mp4"], template_videos[".avi"]
    root = tmp_path / "data"
    _place(mp4, root / "walk" / "b.mp4")
    _place(avi, root / "walk" / "nested" / "deeper" / "a.AVI")
    _place(mp4, root / "run" / "z.mp4")
    _place(mp4, root / "run" / ".hidden.mp4")
    _place(mp4, root / "__MACOSX" / "run" / "._z.mp4")
    (root / "run" / "notes.txt").write_text("not a video", encoding="utf-8")
    ds = ClassFolderVideos(root, num_frames=4, size=16, train=False)
    assert ds.class_names == ["run", "walk"]
    rel = [(Path(p).relative_to(root).as_posix(), label) for p, label in ds.samples]
    assert rel == [("run/z.mp4", 0), ("walk/b.mp4", 1), ("walk/nested/deeper/a.AVI", 1)]
    item = ds[2]
    assert item["clip"].shape == (4, 3, 16, 16) and item["label"] == 1
    assert item["info"]["path"].endswith("a.AVI") and item["info"]["frame_indices"] == [3, 9, 15, 21]
    assert _levels(item["clip"]) == [3, 9, 15, 21]
    json.dumps(item["info"])

    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=ds.collate)))
    assert batch["clip"].shape == (3, 4, 3, 16, 16) and batch["label"].tolist() == [0, 1, 1]
    assert [Path(i["path"]).name for i in batch["info"]] == ["z.mp4", "b.mp4", "a.AVI"]

    fixed = ClassFolderVideos(root, num_frames=4, size=16, train=False, class_names=["walk"])
    assert fixed.class_names == ["walk"] and [label for _, label in fixed.samples] == [0, 0]
    with pytest.raises(FileNotFoundError, match="jump"):
        ClassFolderVideos(root, num_frames=4, size=16, train=False, class_names=["walk", "jump"])
    with pytest.raises(FileNotFoundError):
        ClassFolderVideos(tmp_path / "nowhere", num_frames=4, size=16, train=False)


def test_class_folder_training_items_are_random(tmp_path, template_videos):
    root = tmp_path / "data"
    _place(template_videos["long.mp4"], root / "a" / "v.mp4")
    ds = ClassFolderVideos(root, num_frames=6, size=16, train=True)
    draws = {tuple(ds[0]["info"]["frame_indices"]) for _ in range(6)}
    assert len(draws) > 1


def test_training_draws_repeat_with_the_seed_in_the_loader_and_its_workers(tmp_path, template_videos):
    root = tmp_path / "data"
    _place(template_videos["long.mp4"], root / "a" / "v.mp4")
    ds = ClassFolderVideos(root, num_frames=6, size=16, train=True)

    def draws(seed: int, workers: int) -> list[tuple[int, ...]]:
        torch.manual_seed(seed)  # as core.train seeds the training process
        loader = DataLoader(_FrameIndices(ds, 4), batch_size=None, num_workers=workers,
                            generator=torch.Generator().manual_seed(seed))
        return [tuple(indices) for indices in loader]

    assert draws(3, 0) == draws(3, 0) and len(set(draws(3, 0))) > 1
    assert draws(3, 0) != draws(4, 0)
    assert draws(3, 1) == draws(3, 1) and draws(3, 1) != draws(4, 1)


class _FrameIndices(torch.utils.data.Dataset):
    """The frame indices of item 0 of `dataset`, drawn `times` times."""

    def __init__(self, dataset, times: int):
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return self.times

    def __getitem__(self, index: int) -> list[int]:
        return self.dataset[0]["info"]["frame_indices"]


def test_unreadable_video_raises_with_its_path(tmp_path, template_videos):
    root = tmp_path / "data"
    _place(template_videos[".mp4"], root / "a" / "good.mp4")
    bad = root / "a" / "bad.mp4"
    bad.write_bytes(b"")
    ds = ClassFolderVideos(root, num_frames=4, size=16, train=False)
    with pytest.raises(VideoDecodeError) as err:
        ds[0]  # sorted: bad.mp4 first
    assert err.value.path == str(bad) and err.value.reason == "zero-byte file"
    assert ds[1]["clip"].shape == (4, 3, 16, 16)


# ---------------------------------------------------------------------------------------------- RLVS


def _rlvs_tree(root: Path, videos: dict[str, Path], violence_dir: str, nonviolence_dir: str,
               n: int = 5) -> None:
    for i in range(1, n + 1):
        ext = ".avi" if i == n else ".mp4"
        _place(videos[ext], root / violence_dir / f"V_{i}{ext}")
        _place(videos[ext], root / nonviolence_dir / f"NV_{i}{ext}")


@pytest.mark.parametrize("violence_dir, nonviolence_dir, nested", [
    ("Violence", "NonViolence", True),
    ("violence", "Non_Violence", False),
    ("VIOLENCE", "nonviolence", True),
])
def test_rlvs_layout_variants(tmp_path, template_videos, violence_dir, nonviolence_dir, nested):
    download = tmp_path / "rlvs"
    root = download / "Real Life Violence Dataset" if nested else download
    _rlvs_tree(root, template_videos, violence_dir, nonviolence_dir)
    _place(template_videos[".mp4"], download / "__MACOSX" / "Violence" / "._V_1.mp4")
    assert find_rlvs_root(download) == root
    ds = RLVS(download, num_frames=4, size=16, train=False)
    assert ds.class_names == ["NonViolence", "Violence"]
    names = [(Path(p).name, label) for p, label in ds.samples]
    assert names[:5] == [("NV_1.mp4", 0), ("NV_2.mp4", 0), ("NV_3.mp4", 0), ("NV_4.mp4", 0), ("NV_5.avi", 0)]
    assert [label for _, label in names] == [0] * 5 + [1] * 5
    item = ds[9]
    assert item["label"] == 1 and item["info"]["path"].endswith("V_5.avi")
    assert item["clip"].shape == (4, 3, 16, 16)


def test_rlvs_missing_folders_error(tmp_path, template_videos):
    _place(template_videos[".mp4"], tmp_path / "Violence" / "V_1.mp4")
    with pytest.raises(FileNotFoundError, match="NonViolence"):
        RLVS(tmp_path, num_frames=4, size=16, train=False)


def test_rlvs_with_persisted_split(tmp_path, template_videos):
    root = tmp_path / "rlvs"
    _rlvs_tree(root, template_videos, "Violence", "NonViolence", n=10)
    split_file = tmp_path / "run" / "split.json"
    parts = {name: RLVS(root, num_frames=4, size=16, train=name == "train", split=name, split_file=split_file,
                        val_fraction=0.2, test_fraction=0.2, seed=1)
             for name in ("train", "val", "test")}
    assert {n: len(ds) for n, ds in parts.items()} == {"train": 12, "val": 4, "test": 4}
    for ds in parts.values():  # stratified: both classes equally in every part
        labels = [label for _, label in ds.samples]
        assert labels.count(0) == labels.count(1)
    all_paths = [p for ds in parts.values() for p, _ in ds.samples]
    assert len(set(all_paths)) == 20
    stored = json.loads(split_file.read_text(encoding="utf-8"))
    assert all(not Path(row[0]).is_absolute() for row in stored["splits"]["train"])  # portable
    with pytest.raises(ValueError, match="split_file"):
        RLVS(root, num_frames=4, size=16, train=False, split="train")
    with pytest.raises(ValueError, match="split"):
        RLVS(root, num_frames=4, size=16, train=False, split="dev", split_file=split_file)


# ---------------------------------------------------------------------------------------------- splits


def test_split_is_made_once_and_checked(tmp_path):
    samples = [(f"/d/c{label}/v{i}.mp4", label) for label in (0, 1) for i in range(20)]
    split_file = tmp_path / "split.json"
    first = make_or_load_split(samples, split_file, val_fraction=0.25, test_fraction=0.25, seed=3)
    assert {n: len(v) for n, v in first.items()} == {"train": 20, "val": 10, "test": 10}
    assert sorted(s for part in first.values() for s in part) == sorted(samples)
    for part in first.values():
        assert sum(label for _, label in part) * 2 == len(part)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file

    # a different seed or order does not matter once the file exists: the stored split is reused
    with pytest.warns(UserWarning, match="existing split"):
        again = make_or_load_split(list(reversed(samples)), split_file, val_fraction=0.25, test_fraction=0.25,
                                   seed=99)
    assert again == first
    other = make_or_load_split(samples, tmp_path / "other.json", val_fraction=0.25, test_fraction=0.25,
                               seed=4)
    assert other != first  # the seed does change a fresh split

    with pytest.raises(ValueError, match="1 not in the split"):
        make_or_load_split([*samples, ("/d/c0/new.mp4", 0)], split_file, val_fraction=0.25,
                           test_fraction=0.25, seed=3)
    with pytest.raises(ValueError, match="no longer present"):
        make_or_load_split(samples[1:], split_file, val_fraction=0.25, test_fraction=0.25, seed=3)
    relabelled = [(p, 1 - label) if i == 0 else (p, label) for i, (p, label) in enumerate(samples)]
    with pytest.raises(ValueError, match="changed"):
        make_or_load_split(relabelled, split_file, val_fraction=0.25, test_fraction=0.25, seed=3)


def test_split_rejects_bad_fractions(tmp_path):
    samples = [(f"v{i}.mp4", i % 2) for i in range(10)]
    with pytest.raises(ValueError):
        make_or_load_split(samples, tmp_path / "s.json", val_fraction=0.6, test_fraction=0.5, seed=0)
    with pytest.raises(ValueError, match="stratified"):
        make_or_load_split(samples[:3], tmp_path / "s.json", val_fraction=0.0, test_fraction=0.34, seed=0)
    assert not (tmp_path / "s.json").exists()


# ---------------------------------------------------------------------------------------------- Diving48

_VOCAB = [["Back", "15som", "05Twis", "FREE"], ["Forward", "25som", "NoTwis", "PIKE"],
          ["Inward", "15som", "NoTwis", "TUCK"]]


def _diving48_tree(root: Path, videos: dict[str, Path], *, version: str = "V2_",
                   annotations_dir: str = "") -> Path:
    ann = root / annotations_dir
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "Diving48_vocab.json").write_text(json.dumps(_VOCAB), encoding="utf-8")
    train = [{"vid_name": "aaa_00001", "label": 2, "start_frame": 0, "end_frame": 60},
             {"vid_name": "bbb_00002", "label": 0, "start_frame": 20, "end_frame": 40}]
    test = [{"vid_name": "ccc_00003", "label": 1, "start_frame": 10, "end_frame": 70}]  # end past the video
    (ann / f"Diving48_{version}train.json").write_text(json.dumps(train), encoding="utf-8")
    (ann / f"Diving48_{version}test.json").write_text(json.dumps(test), encoding="utf-8")
    for entry in train + test:
        _place(videos["long.mp4"], root / "rgb" / f"{entry['vid_name']}.mp4")
    return root


def test_diving48_v2(tmp_path, template_videos):
    root = _diving48_tree(tmp_path / "diving48", template_videos)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # V2 loads without warnings
        train = Diving48(root, "train", num_frames=4, size=16)
    assert len(train.class_names) == 3 and train.class_names[0] == "Back / 15som / 05Twis / FREE"
    names = [(Path(p).name, label) for p, label in train.samples]
    assert names == [("aaa_00001.mp4", 2), ("bbb_00002.mp4", 0)]
    assert train.train  # augmentation on by default for the train split
    test = Diving48(root, "test", num_frames=4, size=16)
    assert not test.train
    item = test[0]
    # frames [10, 70) of a 60-frame clip -> segments over [10, 60)
    assert item["info"]["frame_indices"] == [16, 28, 41, 53] and _levels(item["clip"]) == [16, 28, 41, 53]
    assert item["label"] == 1

    rng_items = [train[1]["info"]["frame_indices"] for _ in range(5)]
    assert all(20 <= i < 40 for frames in rng_items for i in frames)  # start/end frames honoured
    batch = train.collate([train[0], train[1]])
    assert batch["clip"].shape == (2, 4, 3, 16, 16) and batch["label"].tolist() == [2, 0]


def test_diving48_annotations_folder_and_v1_warning(tmp_path, template_videos):
    root = _diving48_tree(tmp_path / "d48", template_videos, version="", annotations_dir="annotations")
    with pytest.warns(UserWarning, match="V1"):
        ds = Diving48(root, "train", num_frames=4, size=16)
    assert len(ds) == 2 and ds.annotation_file.name == "Diving48_train.json"


def test_diving48_missing_videos_and_bad_annotations(tmp_path, template_videos):
    root = _diving48_tree(tmp_path / "d48", template_videos)
    (root / "rgb" / "bbb_00002.mp4").unlink()
    with pytest.warns(UserWarning, match="1 of 2"):
        ds = Diving48(root, "train", num_frames=4, size=16)
    assert len(ds) == 1 and [Path(p).name for p in ds.missing] == ["bbb_00002.mp4"]

    (root / "Diving48_V2_test.json").write_text(json.dumps([{"vid_name": "ccc_00003", "label": 48,
                                                            "start_frame": 0, "end_frame": 5}]), encoding="utf-8")
    with pytest.raises(ValueError, match="label 48"):
        Diving48(root, "test", num_frames=4, size=16)
    (root / "Diving48_V2_test.json").write_text(json.dumps([{"vid_name": "ccc_00003"}]), encoding="utf-8")
    with pytest.raises(ValueError, match="start_frame"):
        Diving48(root, "test", num_frames=4, size=16)
    with pytest.raises(ValueError, match="split"):
        Diving48(root, "val", num_frames=4, size=16)
    (root / "Diving48_vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocab"):
        Diving48(root, "train", num_frames=4, size=16)
