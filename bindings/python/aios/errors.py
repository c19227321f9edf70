"""Exception classes of aios: one per error code, shared with the C++ library and the wire.

Every class derives from :class:`aios.Error` and carries ``code`` (the gRPC status number),
``code_name`` and ``field`` (what the error is about, e.g. ``"latents"`` or ``"config.head_dim"``).
"""


class Error(RuntimeError):
    code = 2
    code_name = "unknown"
    field = ""


class InvalidArgumentError(Error, ValueError):
    code, code_name = 3, "invalid_argument"


class NotFoundError(Error, LookupError):
    code, code_name = 5, "not_found"


class AlreadyExistsError(Error):
    code, code_name = 6, "already_exists"


class PermissionDeniedError(Error, PermissionError):
    code, code_name = 7, "permission_denied"


class ResourceExhaustedError(Error):
    code, code_name = 8, "resource_exhausted"


class FailedPreconditionError(Error):
    code, code_name = 9, "failed_precondition"


class UnimplementedError(Error, NotImplementedError):
    code, code_name = 12, "unimplemented"


class InternalError(Error):
    code, code_name = 13, "internal"


class UnavailableError(Error):
    code, code_name = 14, "unavailable"


class DataLossError(Error):
    code, code_name = 15, "data_loss"


_BY_CODE = {cls.code: cls for cls in (InvalidArgumentError, NotFoundError, AlreadyExistsError, PermissionDeniedError,
                                      ResourceExhaustedError, FailedPreconditionError, UnimplementedError, InternalError,
                                      UnavailableError, DataLossError)}


def class_for_code(code: int) -> type:
    return _BY_CODE.get(code, Error)
