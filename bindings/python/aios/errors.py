"""Exception classes of aios: one per error code, shared with the C++ library and the wire.

Every class derives from :class:`aios.Error` and carries ``code`` (the gRPC status number),
``code_name`` and ``field`` (what the error is about, e.g. ``"latents"`` or ``"config.head_dim"``).
The classes are made from the C++ table of codes (``kErrorCodes`` in ``aios/error.h``): the code
``invalid_argument`` is ``InvalidArgumentError``, and so on.
"""
from ._aios import error_codes as _error_codes


class Error(RuntimeError):
    code = 2
    code_name = "unknown"
    field = ""


# The Python exceptions a code is also an instance of, so that `except ValueError` catches it.
_ALSO = {"invalid_argument": ValueError, "not_found": LookupError, "permission_denied": PermissionError,
         "unimplemented": NotImplementedError}

_BY_CODE = {}
for _number, _name, _meaning in _error_codes():
    _class_name = "".join(word.capitalize() for word in _name.split("_")) + "Error"
    _BY_CODE[_number] = globals()[_class_name] = type(
        _class_name, (Error,) + ((_ALSO[_name],) if _name in _ALSO else ()),
        {"code": _number, "code_name": _name, "__doc__": f"{_meaning[0].upper()}{_meaning[1:]}.",
         "__module__": __name__})

__all__ = ["Error", "class_for_code"] + [cls.__name__ for cls in _BY_CODE.values()]


def class_for_code(code: int) -> type:
    return _BY_CODE.get(code, Error)
