"""The shapes of the API's answers: typed models that FastAPI turns into the OpenAPI docs."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field


class FileResult(BaseModel):
    filename: str = Field(description="The name the client gave the file (shown, never used as a path).")
    prob_malignant: Optional[float] = Field(None, description="Calibrated probability of malignancy; null when skipped.")
    prob_benign: Optional[float] = Field(None, description="1 - prob_malignant; null when skipped.")
    label: Optional[Literal["benign", "malignant"]] = Field(None, description="At the run's threshold.")
    confidence: Optional[float] = Field(None, description="The probability of the predicted label.")
    status: str = Field(description='"ok", or "skipped: <why>" when the file is not a usable image.')
    gradcam_png: Optional[str] = Field(None, description="Grad-CAM overlay as a PNG data URI (with ?gradcam=true).")


class PredictResponse(BaseModel):
    model: str = Field(description="The model's name, e.g. original_cnn.")
    threshold: float = Field(description="prob_malignant at or above which the label is malignant.")
    results: list[FileResult]


class ModelInfo(BaseModel):
    model: str
    recipe: str
    engine: str = Field(description="What runs the model: keras or onnx.")
    members: int = Field(description="1, or the number of models an ensemble averages.")
    image_size: int = Field(description="The model's input side in pixels; other sizes are resized.")
    microns_per_pixel: Optional[float] = Field(None, description="The resolution the run was trained at, when known.")
    test_time_augmentation: bool
    threshold: float
    threshold_method: str
    temperature: float
    prior_shift: float
    class_names: list[str]
    data: dict = Field(description="What the run was trained on: path, layout, fingerprint, parts.")
    validation_metrics: Optional[dict] = Field(None, description="Metrics on the validation split at the threshold.")
    histoclass_version: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model_calls: int = Field(0, description="Batches the model has run so far (concurrent requests share one).")


class Problem(BaseModel):
    detail: str
