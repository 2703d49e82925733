"""Datasets fastseg can make: synthetic raw datasets and converters from other formats
(MedSAM .npz, DICOM series) into nnU-Net v2's raw layout."""
