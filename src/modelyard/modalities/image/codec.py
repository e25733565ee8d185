"""Images over HTTP: a multipart form with one image file in the field `file`."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from modelyard.modalities import Codec, InvalidInputError
from modelyard.modalities._http import FORM_REFUSALS, STATUSES, form_file
from modelyard.modalities.image.preprocess import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE

FIELD = "file"
FORM_OVERHEAD = 64 * 1024  # the form's framing around the file


class ImageCodec(Codec):
    content_type: ClassVar[str] = "multipart/form-data"
    wrong_type: ClassVar[str] = "not_multipart"
    record_field: ClassVar[str] = "image"  # the file's bytes
    statuses: ClassVar[dict[str, int]] = STATUSES | {
        "empty_file": 400, "not_an_image": 415, "image_too_small": 422, "image_too_large": 413}

    @property
    def max_body_bytes(self) -> int:
        return self.limits.max_body_bytes + FORM_OVERHEAD

    def decode(self, body: bytes, content_type: str) -> tuple[list[Any], bool]:
        data = form_file(body, content_type, FIELD, self.limits.max_body_bytes)
        return [self.preprocessor.decode(data)], False

    def decode_record(self, value: Any) -> np.ndarray:
        data = bytes(value)
        if len(data) > self.limits.max_body_bytes:
            raise InvalidInputError("image_too_large", f"the file has {len(data):,} bytes; at most "
                                                       f"{self.limits.max_body_bytes:,}")
        return self.preprocessor.check_batch(self.preprocessor.decode(data))[0]

    def decode_raw(self, body: bytes) -> tuple[list[Any], bool]:
        """The file's bytes themselves (`curl -T photo.png`), not a form."""
        return [self.decode_record(body)], False

    def collate(self, items: list[np.ndarray]) -> np.ndarray:
        return np.stack(items)

    def request_body(self) -> dict[str, Any]:
        return {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": [FIELD], "additionalProperties": False,
            "properties": {FIELD: {"type": "string", "format": "binary", "minLength": 1, "description": (
                f"a PNG, JPEG, BMP, GIF, TIFF or WebP image, gray or colour, each side at least {MIN_IMAGE_SIDE} px "
                f"and at most {MAX_IMAGE_PIXELS:,} pixels; it is resized to what the model was trained on")}}}}}}

    def summary(self) -> str:
        return (f"Send one image as multipart/form-data in the field '{FIELD}'; files over "
                f"{self.limits.max_body_bytes:,} bytes get 413.")

    def refusals(self) -> dict[str, str]:
        return FORM_REFUSALS | {
            "body_too_large": f"the file is over {self.limits.max_body_bytes:,} bytes",
            "empty_file": "the file is empty",
            "not_an_image": "the file is not an image (PNG, JPEG, BMP, GIF, TIFF, WebP) or is cut short",
            "image_too_small": f"a side of the image is under {MIN_IMAGE_SIDE} px",
            "image_too_large": f"the image has over {MAX_IMAGE_PIXELS:,} pixels"}
