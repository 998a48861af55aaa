"""The JSON card written beside an exported model: what goes in, what comes out, how to read it."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import CLASS_NAMES, __version__
from ..fileio import file_sha256

if TYPE_CHECKING:
    from ..inference.run import Run


def card_path(out: Path) -> Path:
    """`model.onnx` -> `model.onnx.card.json`; a SavedModel folder `exported` -> `exported.card.json`."""
    return out.with_name(out.name + ".card.json")


def files_sha256(out: Path) -> dict[str, str]:
    """SHA-256 of the exported file, or of each file of an exported folder (relative paths)."""
    if out.is_file():
        return {out.name: file_sha256(out)}
    return {str(path.relative_to(out)): file_sha256(path)
            for path in sorted(out.rglob("*")) if path.is_file()}


def model_card(run: "Run", fmt: str, out: Path, parity: dict[str, Any]) -> dict[str, Any]:
    size = run.image_size
    hashes = files_sha256(out)
    return {
        "format": fmt,
        "path": out.name,
        "sha256": hashes[out.name] if out.is_file() else None,
        "files_sha256": None if out.is_file() else hashes,
        "histoclass_version": __version__,
        "exported_from": str(run.folder),
        "model": run.config.model,
        "recipe": run.config.recipe,
        "members": len(run.models),
        "class_names": list(CLASS_NAMES),
        "input": {"name": "image", "dtype": "uint8", "shape": [None, size, size, 3],
                  "channels": "RGB", "range": [0, 255],
                  "note": f"resize other sizes to {size}x{size} first (histoclass uses area "
                          "interpolation for shrinking, bilinear for enlarging)"},
        "output": {"name": "probabilities" if fmt == "onnx" else "output_0", "dtype": "float32",
                   "shape": [None, 2], "columns": list(CLASS_NAMES), "calibrated": True},
        "image_size": size,
        "microns_per_pixel": getattr(run.config, "mpp", None),
        "threshold": run.threshold,
        "threshold_method": run.calibration.threshold_method,
        "decision": "malignant when probabilities[:, 1] >= threshold, else benign",
        "temperature": run.temperature,
        "prior_shift": run.prior_shift,
        "test_time_augmentation": run.config.test_time_augmentation,
        "in_graph": ["uint8 -> float32", "rescale 1/255", "batch norm folded", "no augmentation",
                     *(["mean of the 8 dihedral views"] if run.config.test_time_augmentation else []),
                     *(["mean of the ensemble members"] if len(run.models) > 1 else []),
                     "prior shift and temperature (calibration)"],
        "stain_normalization": _stain_note(run),
        "parity": parity,
    }


def _stain_note(run: "Run") -> dict[str, Any]:
    if run.stain is None:
        return {"method": "none", "in_graph": False}
    return {"method": run.stain.method, "in_graph": False, "reference": run.stain.reference.to_dict(),
            "note": "the run was trained on stain-normalized images and the graph does not normalize: "
                    "normalize the uint8 images first, one transform per patient or slide fitted on "
                    "many of its tiles (histoclass.stain.context.StainNormalizer with this reference), "
                    "as `histoclass predict` and `histoclass slide` do"}
