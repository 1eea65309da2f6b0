"""What an ImageFolder is, for both planes: the file names torchvision's ImageFolder reads as images,
and the archive suffixes a dataset may come as. The trainer indexes with them (trainer.data,
trainer.fetch); the orchestrator checks a dataset's URL with them before paying for a boot
(orchestrator.aws.datasets). Torch-free, like the rest of trainer.job."""

from __future__ import annotations

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision.datasets.folder.IMG_EXTENSIONS (matched case-insensitively, as ImageFolder does)."""

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
"""A dataset given as one archive of an ImageFolder (trainer.fetch extracts it)."""


def is_image(name: str) -> bool:
    """A file the ImageFolder counts: an image extension, not a hidden file."""
    base = name.rsplit("/", 1)[-1]
    return base.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith(".")


def is_archive(path: str) -> bool:
    return path.endswith(ARCHIVE_SUFFIXES)
