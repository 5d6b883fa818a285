"""Test helpers: small torch models exported to ONNX (planted, timm dual-stream), bundles and simple DICOM series."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inference.config import AggregationConfig, PreprocessConfig, WindowConfig
from inference.labels import LABELS
from inference.manifest import FoldEntry, Manifest

__all__ = ["PlantedModel", "DualStreamNet", "export_onnx", "write_bundle", "planted_logits", "PLANTED",
           "write_ct_series", "head_like_stack", "raising_model"]

NUM_LABELS = len(LABELS)

# Which label the planted model fills with which feature (indices into LABELS).
PLANTED = {
    "left_half": 0,   # "Left Infraclinoid ICA"  <- mean of the centre channel over the patient's left (high cols)
    "right_half": 1,  # "Right Infraclinoid ICA" <- mean over the patient's right (low cols)
    "channels": 2,    # labels 2 .. 2+C-1        <- mean of channel c (checks channel order)
}


def planted_logits(windows: np.ndarray, *, gain: float = 8.0, bias: float = -4.0) -> np.ndarray:
    """Numpy reference of `PlantedModel`: logits (N, 14) of float windows (N, C, S, S)."""
    x = np.asarray(windows, dtype=np.float64)
    n, c, _, s = x.shape
    centre = c // 2
    out = np.full((n, NUM_LABELS), -6.0)
    out[:, PLANTED["left_half"]] = gain * x[:, centre, :, s // 2:].mean(axis=(1, 2)) + bias
    out[:, PLANTED["right_half"]] = gain * x[:, centre, :, : s // 2].mean(axis=(1, 2)) + bias
    first = PLANTED["channels"]
    out[:, first:first + c] = gain * x.mean(axis=(2, 3)) + bias
    return out


class PlantedModel(nn.Module):
    """Logits that are affine functions of region means (see `planted_logits`); other labels sit at -6.

    The centre channel is C // 2 (offsets (-2..2) put offset 0 there). Exports with a dynamic batch.
    """

    def __init__(self, channels: int, *, gain: float = 8.0, bias: float = -4.0) -> None:
        super().__init__()
        self.channels, self.gain, self.bias = channels, gain, bias

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        x = window.float()
        s = x.shape[-1]
        centre = x[:, self.channels // 2]
        left = centre[:, :, s // 2:].mean(dim=(1, 2)) * self.gain + self.bias
        right = centre[:, :, : s // 2].mean(dim=(1, 2)) * self.gain + self.bias
        per_channel = x.mean(dim=(2, 3)) * self.gain + self.bias
        first = PLANTED["channels"]
        rest = NUM_LABELS - first - self.channels
        pad = torch.zeros_like(per_channel[:, :1]).expand(-1, rest) - 6.0
        return torch.cat([left[:, None], right[:, None], per_channel, pad], dim=1)


class DualStreamNet(nn.Module):
    """Two timm backbones fed the same window, a coordinate MLP (2 -> hidden, fed zeros at inference), linear head.

    This is the inference regime of the trainer's dual-stream model: the coordinates are zeros inside the graph.
    """

    def __init__(self, backbone: str = "tf_efficientnet_b0", *, in_chans: int = 5, num_labels: int = NUM_LABELS,
                 coord_hidden: int = 64) -> None:
        super().__init__()
        import timm

        self.stream_a = timm.create_model(backbone, pretrained=False, in_chans=in_chans, num_classes=0)
        self.stream_b = timm.create_model(backbone, pretrained=False, in_chans=in_chans, num_classes=0)
        self.coord = nn.Sequential(nn.Linear(2, coord_hidden), nn.ReLU())
        # MobileNetV3 adds a head conv after num_features: its pooled width is head_hidden_size
        width = int(getattr(self.stream_a, "head_hidden_size", None) or self.stream_a.num_features)
        features = 2 * width + coord_hidden
        self.head = nn.Linear(features, num_labels)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        x = window.to(self.head.weight.dtype)  # a float16 graph input is cast to the weights' type
        coords = x.new_zeros(x.shape[0], 2)
        feats = torch.cat([self.stream_a(x), self.stream_b(x), self.coord(coords)], dim=1)
        return self.head(feats)


def export_onnx(model: nn.Module, path: str | Path, *, channels: int, size: int, dtype: str = "float32",
                opset: int = 17) -> Path:
    """Export `model` (eval mode) with input `window` (batch, C, S, S) and output `logits` (batch, 14)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    torch_dtype = torch.float16 if dtype == "float16" else torch.float32
    example = torch.rand(2, channels, size, size).to(torch_dtype)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: fast and dependable here
        torch.onnx.export(model, (example,), str(path), input_names=["window"], output_names=["logits"],
                          dynamic_axes={"window": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    return path


def write_bundle(folder: str | Path, onnx_files: list[Path], *, preprocess: PreprocessConfig | None = None,
                 windows: WindowConfig | None = None, aggregation: AggregationConfig | None = None,
                 priors: tuple[float, ...] | None = None, input_dtype: str = "float32") -> Manifest:
    """Copy nothing: write a manifest in `folder` for ONNX files already inside it (fold i = onnx_files[i])."""
    folder = Path(folder)
    preprocess = preprocess or PreprocessConfig(image_size=32)
    windows = windows or WindowConfig()
    folds = tuple(FoldEntry.for_file(folder, Path(f).relative_to(folder).as_posix(), fold=i, val_score=0.5)
                  for i, f in enumerate(onnx_files))
    manifest = Manifest(labels=LABELS, input_name="window", output_name="logits",
                        input_shape=("batch", windows.channels, preprocess.image_size, preprocess.image_size),
                        input_dtype=input_dtype, preprocess=preprocess, windows=windows,
                        aggregation=aggregation or AggregationConfig(), folds=folds,
                        priors=priors or tuple(round(0.01 * (i + 1), 2) for i in range(NUM_LABELS)),
                        provenance={"source": "tests/onnx_models.py"})
    manifest.write(folder)
    return manifest


def raising_model(path, *, channels: int = 5, size: int = 32) -> Path:
    """A valid graph that fails at run time: a Gather with an index far outside the flattened window."""
    import onnx
    from onnx import TensorProto, helper

    window = helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", channels, size, size])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 14])
    index = helper.make_tensor("index", TensorProto.INT64, [14], [10**9] * 14)
    nodes = [helper.make_node("Flatten", ["window"], ["flat"], axis=1),
             helper.make_node("Gather", ["flat", "index"], ["logits"], axis=1)]
    graph = helper.make_graph(nodes, "raises", [window], [logits], initializer=[index])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def write_ct_series(folder: str | Path, stack_hu: np.ndarray, *, spacing: tuple[float, float, float] = (1.0, 0.5, 0.5),
                    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0), series_uid: str | None = None,
                    modality: str = "CT") -> list[Path]:
    """Write a (k, i, j) stack as uncompressed single-frame DICOM files, slice k at origin + k * spacing * normal.

    CT values are stored as int16 with RescaleIntercept -1024 (so pixels = stored + (-1024)); MR values as stored.
    Files are written in reverse slice order so a loader must sort them.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if series_uid is None:  # the folder name when it is a valid UID, as on Kaggle
        valid = folder.name and all(ch.isdigit() or ch == "." for ch in folder.name)
        series_uid = folder.name if valid else generate_uid()
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    sop_class = "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"
    intercept = -1024.0 if modality == "CT" else 0.0
    paths = []
    for k in reversed(range(stack_hu.shape[0])):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid
        ds.Modality, ds.PatientID, ds.InstanceNumber = modality, "bench", k + 1
        ds.ImagePositionPatient = [float(v) for v in normal * k * spacing[0]]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = stack_hu.shape[1], stack_hu.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, intercept
        ds.PixelData = np.rint(stack_hu[k] - intercept).astype(np.int16).tobytes()
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def head_like_stack(slices: int, size: int, *, seed: int = 0) -> np.ndarray:
    """A head-like CT stack in HU (air, skull ring, brain, a few bright vessels), float32 (slices, size, size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    r = np.hypot((yy - size / 2) / (0.42 * size), (xx - size / 2) / (0.36 * size))
    base = np.where(r < 1.0, 35.0, -1000.0).astype(np.float32)
    base[(r >= 0.92) & (r < 1.0)] = 1200.0
    out = np.empty((slices, size, size), dtype=np.float32)
    for z in range(slices):
        out[z] = base + rng.normal(0, 8, size=(size, size)).astype(np.float32)
        cy, cx = size / 2 + 0.1 * size * np.sin(z / 17), size / 2 + 0.1 * size * np.cos(z / 23)
        out[z][(yy - cy) ** 2 + (xx - cx) ** 2 < (0.02 * size) ** 2] = 350.0
    return out
