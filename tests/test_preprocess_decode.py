"""load_image on every kind of file a crawl brings home: odd modes become upright BGR, bad files a reason;
big photos decoded at a reduced scale, with the same crops and bounded memory."""

import io
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from preprocess.config import PreprocessConfig
from preprocess.decode import ImageDecodeError, load_image, open_image
from preprocess.detect import FaceDetector
from preprocess.photo import face_crops
from preprocess.verify import SecondOpinion
from tests.preprocess_data import png_claiming_size

PHOTO = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos" / "webmorph-neutral" / "001_03.jpg"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def portrait() -> Image.Image:
    """A real photo cut to portrait shape (512 x 400), so a wrong rotation changes its shape."""
    if not PHOTO.is_file():
        pytest.skip(f"the shared photos are not at {PHOTO.parents[1]}")
    with Image.open(PHOTO) as im:
        return im.convert("RGB").crop((56, 0, 456, 512))


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(PreprocessConfig())


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def bgr_of(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"))[:, :, ::-1]


def test_exif_orientation_is_applied(portrait, detector):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the pixels are stored turned left
    stored = portrait.transpose(Image.Transpose.ROTATE_90)
    bgr = load_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert bgr.shape == (512, 400, 3) and bgr.dtype == np.uint8
    assert np.abs(bgr.astype(int) - bgr_of(portrait)).mean() < 4
    assert len(detector.detect(bgr)) == 1


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("L", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"), ("LA", "PNG"), ("RGB", "WEBP"), ("RGB", "BMP")],
)
def test_other_modes_and_formats_become_bgr_with_the_face_intact(portrait, detector, mode, fmt):
    im = portrait.convert(mode) if mode != "P" else portrait.quantize(256)
    bgr = load_image(encode(im, fmt))
    assert bgr.shape == (512, 400, 3) and bgr.dtype == np.uint8
    reference = bgr_of(im)
    assert np.abs(bgr.astype(int) - reference).mean() < 8, "colours changed in conversion"
    assert len(detector.detect(bgr)) == 1


def test_alpha_is_composited_over_white(portrait):
    rgba = portrait.convert("RGBA")
    alpha = np.full((512, 400), 255, np.uint8)
    alpha[:, :100] = 0  # the left quarter is transparent
    rgba.putalpha(Image.fromarray(alpha))
    bgr = load_image(encode(rgba, "PNG"))
    assert (bgr[:, :100] == 255).all()
    assert np.array_equal(bgr[:, 100:], bgr_of(portrait)[:, 100:])


def test_16_bit_images_are_scaled_to_8_bit(portrait):
    grey8 = np.asarray(portrait.convert("L"))
    ok, png16 = cv2.imencode(".png", grey8.astype(np.uint16) * 257)  # 16-bit greyscale, full range
    bgr = load_image(png16.tobytes())
    assert np.abs(bgr[:, :, 0].astype(int) - grey8).max() <= 1
    colour8 = bgr_of(portrait)
    ok, png48 = cv2.imencode(".png", colour8.astype(np.uint16) * 257)  # 16 bits per channel
    assert np.abs(load_image(png48.tobytes()).astype(int) - colour8).max() <= 1


def test_animated_gif_gives_its_first_frame():
    red, blue = Image.new("RGB", (64, 48), (255, 0, 0)), Image.new("RGB", (64, 48), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    bgr = load_image(data)
    assert bgr.shape == (48, 64, 3)
    assert tuple(bgr[10, 10]) == (0, 0, 255)  # red, in BGR


def test_a_path_works_like_bytes(tmp_path, portrait):
    path = tmp_path / "p.jpg"
    path.write_bytes(encode(portrait, "JPEG"))
    assert np.array_equal(load_image(path), load_image(path.read_bytes()))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is not an image at all, just text", "not an image"),
        (png_claiming_size(100_000, 100_000), "decompression bomb"),
    ],
)
def test_bad_files_raise_a_reason(data, reason):
    with pytest.raises(ImageDecodeError) as e:
        load_image(data)
    assert reason in e.value.reason


def test_truncated_and_corrupt_jpegs_raise_a_reason(portrait):
    jpeg = encode(portrait, "JPEG", quality=90)
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageDecodeError, match="corrupt|not an image"):
        load_image(jpeg[:200] + bytes(range(256)) * 20)


def test_pixel_limit_is_configurable(portrait):
    data = encode(portrait, "PNG")
    with pytest.raises(ImageDecodeError, match="decompression bomb: 400x512"):
        load_image(data, max_pixels=200_000)
    assert load_image(data, max_pixels=204_800).shape == (512, 400, 3)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageDecodeError, match="missing file"):
        load_image(tmp_path / "gone.jpg")


def test_a_jpeg_decodes_at_a_reduced_scale_to_the_same_picture(portrait):
    big = portrait.resize((1600, 2048), Image.Resampling.BICUBIC)
    image = open_image(encode(big, "JPEG", quality=92))
    assert (image.width, image.height, image.is_jpeg) == (1600, 2048, True)
    full = image.decode()
    for reduce in (2, 4, 8):
        small = image.decode(reduce)
        assert small.shape == (2048 // reduce, 1600 // reduce, 3)
        expected = cv2.resize(full, small.shape[1::-1], interpolation=cv2.INTER_AREA)
        assert np.abs(small.astype(int) - expected).mean() < 2, reduce


def test_other_formats_and_turned_jpegs_decode_reduced_too(portrait):
    png = open_image(encode(portrait, "PNG"))
    assert png.decode(4).shape == (128, 100, 3)  # decoded whole, then shrunk
    assert (
        np.abs(
            png.decode(4).astype(int) - cv2.resize(bgr_of(portrait), (100, 128), interpolation=cv2.INTER_AREA)
        ).mean()
        < 2
    )
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = open_image(encode(portrait.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes()))
    assert (turned.width, turned.height) == (400, 512)
    assert turned.decode(2).shape == (256, 200, 3)


WORKER = """
import sys
from common.layout import DataRoot
from preprocess.config import PreprocessConfig
from preprocess.pipeline import Source, process_batch
root = DataRoot(sys.argv[1])
result = process_batch(PreprocessConfig(), root, [Source("huge", sys.argv[2]), Source("small", sys.argv[3])])
peak_kib = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(sum(len(o.crops) for o in result.outcomes), int(peak_kib) // 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak memory from /proc")
def test_a_64_megapixel_photo_keeps_a_worker_under_400_mb(tmp_path, portrait):
    """Decoded at 1/8 (the face is big enough there): the worker never holds the whole photo. (The
    peak is the child's own, VmHWM: ru_maxrss would count this test process's pages before exec.)"""
    huge = cv2.resize(bgr_of(portrait), (6250, 8000), interpolation=cv2.INTER_LINEAR)
    (tmp_path / "huge.jpg").write_bytes(
        cv2.imencode(".jpg", huge, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
    )
    del huge
    (tmp_path / "small.jpg").write_bytes(PHOTO.read_bytes())
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(tmp_path), "huge.jpg", "small.jpg"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    crops, peak_mib = (int(v) for v in done.stdout.split())
    assert crops == 2 and peak_mib < 400, f"{crops} crops, peak {peak_mib} MiB"


def test_a_big_photo_gives_the_crop_its_original_gives(detector):
    """A 3072 px copy of a photo is decoded reduced: its crop lands the pupils where the original's does."""
    config = PreprocessConfig()
    opinion = SecondOpinion(config)
    original = load_image(PHOTO)
    big = cv2.resize(original, (3072, 3072), interpolation=cv2.INTER_CUBIC)
    (small_crop,), _ = face_crops(config, open_image(PHOTO.read_bytes()), detector, opinion)
    (big_crop,), _ = face_crops(config, open_image(cv2.imencode(".jpg", big)[1].tobytes()), detector, opinion)
    landmarks = (big_crop.face.landmarks + 0.5) / 6 - 0.5  # back to the original's pixels
    assert np.abs(landmarks[:2] - small_crop.face.landmarks[:2]).max() < 1.5
    assert np.abs(big_crop.crop.astype(int) - small_crop.crop).mean() < 12
