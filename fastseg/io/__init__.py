"""Reading, writing and verifying images and raw datasets in nnU-Net v2's formats.

Images and segmentations (`images`): `read_images`, `read_seg`, `write_seg`, `write_image`, with the
format picked by file ending (`reader_for`): SimpleITK (.nii.gz .nii .nrrd .mha .gipl), 2D natural
images (.png .bmp), TIFF (.tif .tiff: 2D, or 3D with a JSON spacing sidecar).

Raw datasets: `load_raw_dataset` -> `RawDataset` of `CaseFiles` (`dataset`); dataset.json checks
and creation (`dataset_json`, `labels`); `verify_dataset` -> `VerificationReport` (`verify`);
`staged_dataset` and `write_case` write datasets all or nothing (`raw_writer`).
"""

from fastseg.io.dataset import CaseFiles, RawDataset, load_raw_dataset, scan_raw_dataset
from fastseg.io.dataset_json import make_dataset_json, read_dataset_json, write_dataset_json
from fastseg.io.errors import DatasetError, ImageFileError
from fastseg.io.formats import SUPPORTED_FILE_ENDINGS, ImageFormat, reader_for, split_ending
from fastseg.io.images import read_images, read_seg, write_image, write_seg
from fastseg.io.labels import LabelSpec
from fastseg.io.raw_writer import staged_dataset, write_case
from fastseg.io.report import Problem, VerificationReport
from fastseg.io.verify import verify_dataset

__all__ = [
    "SUPPORTED_FILE_ENDINGS",
    "CaseFiles",
    "DatasetError",
    "ImageFileError",
    "ImageFormat",
    "LabelSpec",
    "Problem",
    "RawDataset",
    "VerificationReport",
    "load_raw_dataset",
    "make_dataset_json",
    "read_dataset_json",
    "read_images",
    "read_seg",
    "reader_for",
    "scan_raw_dataset",
    "split_ending",
    "staged_dataset",
    "verify_dataset",
    "write_case",
    "write_dataset_json",
    "write_image",
    "write_seg",
]
