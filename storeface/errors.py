"""The exception hierarchy: every error a client can cause has a stable code and HTTP status."""

from __future__ import annotations

from typing import Any


class StorefaceError(Exception):
    """Base of every Storeface error; `code` is stable, `message` is for humans."""

    status_code = 500
    code = "internal_error"
    default_message = "internal error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or self.default_message
        self.details = details
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


# --- 400: the request itself is wrong ---------------------------------------------------


class BadRequest(StorefaceError):
    status_code = 400
    code = "bad_request"
    default_message = "bad request"


class InvalidRequest(BadRequest):
    status_code = 422
    code = "invalid_request"
    default_message = "the request is missing fields or has invalid ones"


class ImageError(BadRequest):
    """Something is wrong with the uploaded image."""


class NotAnImage(ImageError):
    status_code = 415
    code = "not_an_image"
    default_message = "the upload is not an image in a supported format"


class TruncatedImage(ImageError):
    code = "truncated_image"
    default_message = "the image is truncated or corrupt"


class EmptyImage(ImageError):
    code = "empty_image"
    default_message = "the image is empty"


class ImageTooLarge(ImageError):
    status_code = 413
    code = "image_too_large"
    default_message = "the image file is larger than the limit"


class DecompressionBomb(ImageError):
    status_code = 413
    code = "decompression_bomb"
    default_message = "the image has more pixels than the limit"


class FaceError(BadRequest):
    status_code = 422


class NoFace(FaceError):
    code = "no_face"
    default_message = "no face was found in the image"


class MultipleFaces(FaceError):
    code = "multiple_faces"
    default_message = "enrollment needs exactly one face; the image has several"


class FaceTooSmall(FaceError):
    code = "face_too_small"
    default_message = "the face is too small or too blurred to enroll"


class EmbeddingInvalid(BadRequest):
    status_code = 422
    code = "invalid_embedding"
    default_message = "the embedding has the wrong dimension or is not finite"


# --- 401/403: access ---------------------------------------------------------------------


class Unauthorized(StorefaceError):
    status_code = 401
    code = "unauthorized"
    default_message = "a valid X-API-Key header is required"


class Forbidden(StorefaceError):
    status_code = 403
    code = "forbidden"
    default_message = "this API key may not do that"


# --- 404/409: state ----------------------------------------------------------------------


class NotFound(StorefaceError):
    status_code = 404
    code = "not_found"
    default_message = "not found"


class UnknownStore(NotFound):
    code = "unknown_store"
    default_message = "no such store"


class FaceNotFound(NotFound):
    code = "face_not_found"
    default_message = "no such face"


class MemberNotBound(NotFound):
    code = "member_not_bound"
    default_message = "this face has no member bound"


class Conflict(StorefaceError):
    status_code = 409
    code = "conflict"
    default_message = "conflict"


class EmbedderMismatch(Conflict):
    code = "embedder_mismatch"
    default_message = "the store's index was built with another embedder"


class AlreadyEnrolled(Conflict):
    code = "already_enrolled"
    default_message = "this face is already enrolled under another FaceId"


class FaceMismatch(Conflict):
    code = "face_mismatch"
    default_message = "the photo does not look like the FaceId it is filed under"


class MemberTaken(Conflict):
    code = "member_taken"
    default_message = "the member id is bound to another FaceId"


class SweepRunning(Conflict):
    code = "sweep_running"
    default_message = "a retention sweep is already running (on this or another gateway)"


# --- 5xx: our side -------------------------------------------------------------------------


class ServiceUnavailable(StorefaceError):
    status_code = 503
    code = "unavailable"
    default_message = "the service is not ready"


class NotReady(ServiceUnavailable):
    code = "not_ready"
    default_message = "the index is still loading"


class StoreNotHosted(ServiceUnavailable):
    """A shard node asked for a store it does not host (yet): a stale or early map, so
    503 and retryable — nginx and the gateway then try another replica."""

    code = "store_not_hosted"
    default_message = "this shard node group does not host that store"


class Overloaded(ServiceUnavailable):
    """Every replica of a store's group is at capacity: refused at once, before anything is
    recorded, so a camera retries after Retry-After instead of waiting."""

    code = "overloaded"
    default_message = "the store's shard is at capacity; try again shortly"


class ReplicaBusy(StorefaceError):
    """One shard replica's pipeline queue is full. 429, not 503: nginx counts a retried 503
    against the replica and marks it down for fail_timeout, so a burst would take every
    busy replica out; the gateway tries another replica itself, then answers Overloaded."""

    status_code = 429
    code = "overloaded"
    default_message = "this replica's face pipeline is at capacity"


class PipelineRestarting(ServiceUnavailable):
    """A face-pipeline worker died mid-request (killed, out of memory): the pool is being
    replaced; the request is not retried, in case the photo itself killed it."""

    code = "pipeline_restarting"
    default_message = "the face pipeline is restarting; try again shortly"


class StorageUnavailable(ServiceUnavailable):
    code = "storage_unavailable"
    default_message = "the data store (Redis) did not answer; try again shortly"


class ShardUnavailable(ServiceUnavailable):
    code = "shard_unavailable"
    default_message = "the store's shard did not answer"


class ConfigError(StorefaceError):
    """A configuration file is invalid; raised at start-up, never to a client."""

    code = "config_error"


class UnknownEmbedder(ConfigError):
    code = "unknown_embedder"
    default_message = "no embedder of that name"


class ModelMissing(ConfigError):
    code = "model_missing"
    default_message = "an ONNX model file is missing"


class ModelMismatch(ConfigError):
    code = "model_mismatch"
    default_message = "the ONNX model does not produce what the configuration says"


class ModelFetchFailed(ConfigError):
    code = "model_fetch_failed"
    default_message = "a model file could not be fetched or did not match its checksum"


class RemoteError(StorefaceError):
    """An error a shard answered with, passed on to the client unchanged."""

    def __init__(self, status_code: int, code: str, message: str, **details: Any) -> None:
        self.status_code = status_code
        self.code = code
        super().__init__(message, **details)
