"""Folders of images, one sub-folder per class: ``root/{train,val,test}/<class>/*`` or ``root/<class>/*``."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dataclasses import dataclass

from transferlab.data import KINDS
from transferlab.data.base import SPLITS, digest, split_three_ways
from transferlab.data.images import ImageData, LabeledImages
from transferlab.errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # how PIL opens 16-bit greyscale PNG, TIFF and PGM
DECODING = "exif-orientation,16-bit-scaled"  # in the feature-cache key: a change here changes every image


def decode(img: Image.Image) -> Image.Image:
    """The RGB picture a viewer shows: EXIF orientation applied (cameras store a portrait photo
    sideways plus a tag), 16-bit greyscale scaled by 255/65535 (``convert("RGB")`` would clip every
    value above 255 to white). Float images are refused: their range is the writer's convention."""
    img = ImageOps.exif_transpose(img)
    if img.mode == "F":  # convert("RGB") would clip to 0-255: a [0, 1] image would come out black
        raise ValueError("a 32-bit float image (PIL mode F) has no fixed value range to map to 8 bits; save it "
                         "as 8-bit, or as 16-bit scaled to 0-65535")
    if img.mode in WIDE_GREY:
        grey = np.clip(np.asarray(img, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
        img = Image.fromarray(grey, mode="L")
    return img.convert("RGB")


class Files(LabeledImages):
    """Image files on disk with label columns; opened lazily, a corrupt file is named in the error."""

    def __init__(self, paths: list[str], targets, classes):
        self.paths = list(paths)
        super().__init__(targets, classes)

    def load(self, i: int) -> Image.Image:
        with Image.open(self.paths[i]) as img:
            return decode(img)

    def describe(self, i: int) -> str:
        return f"'{self.paths[i]}'"

    def content_key(self) -> str | None:
        """Each file's path, size, modification and status-change time, and how files are decoded: an
        edited or replaced image changes the key, even one edited in place with its size and
        modification time kept (``exiftool -P`` turning a photo; the status-change time cannot be set
        back), and so does a new way of decoding (features extracted before EXIF or 16-bit support)."""
        try:
            stats = [(self.paths[i], (s := os.stat(self.paths[i])).st_size, s.st_mtime_ns, s.st_ctime_ns)
                     for i in self.indices]
        except OSError:
            return None
        return digest(DECODING.encode(), repr(stats).encode())


def scan(folder: Path, classes: list[str] | None = None) -> Files:
    """One class per sub-folder (sorted names); every class must hold at least one image."""
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = classes or found
    if not found:
        raise DataError(f"data root '{folder}' has no class folders; expected '{folder}/<class>/<image>' "
                        f"(or train/, val/, test/ folders each laid out that way)")
    if sorted(found) != sorted(classes):
        raise DataError(f"'{folder}' has classes {found} but the train split has {classes}; every split needs "
                        f"the same class folders")
    paths, labels = [], []
    for c, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
        if not files:
            raise DataError(f"class folder '{folder / name}' holds no images ({', '.join(IMG_EXTENSIONS)})")
        paths += [str(p) for p in files]
        labels += [c] * len(files)
    return Files(paths, {"label": labels}, {"label": classes})


@KINDS.register("image_folder")
@dataclass(kw_only=True)
class ImageFolderData(ImageData):
    kind: str = "image_folder"
    root: str | None = None  # root/{train,val,test}/<class>/* or root/<class>/*

    def create(self):
        if not self.root:
            raise DataError("data.root is not set; pass data.root=/path/to/images")
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise DataError(f"data root '{root}' does not exist or is not a folder")
        if (root / "train").is_dir():
            train = scan(root / "train")
            given = {n: scan(root / n, train.classes["label"]) for n in SPLITS[1:] if (root / n).is_dir()}
            carved = split_three_ways(train, "label", 0 if "val" in given else self.val_fraction,
                                      0 if "test" in given else self.test_fraction, self.split_seed)
            return {name: given.get(name, carved[name]) for name in SPLITS}
        return split_three_ways(scan(root), "label", self.val_fraction, self.test_fraction, self.split_seed)
