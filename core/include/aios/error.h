// aios/error.h — the one error type of aios.
//
// Every failure that a caller can act on is an aios::Error carrying an ErrorCode. The numeric values
// are the gRPC status codes, so the same enum travels unchanged over the wire, and the Python module
// raises one exception class per code (aios.InvalidArgumentError, aios.NotFoundError, ...).
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios {

enum class ErrorCode : int {
  kInvalidArgument = 3,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
};

struct ErrorCodeInfo {
  ErrorCode code;
  std::string_view name;     // stable: in messages, in Python's class names (aios.InvalidArgumentError)
  std::string_view meaning;  // when to use it
};

// Every code once: what lists the codes (their names, Python's exception classes) reads this table.
inline constexpr ErrorCodeInfo kErrorCodes[] = {
    {ErrorCode::kInvalidArgument, "invalid_argument",
     "the caller passed something malformed (a shape, dtype, range or config value)"},
    {ErrorCode::kNotFound, "not_found", "a file, tensor, handle or name that does not exist"},
    {ErrorCode::kAlreadyExists, "already_exists", "something the caller would create exists already (a token, a name)"},
    {ErrorCode::kPermissionDenied, "permission_denied", "the caller may not use this object or call"},
    {ErrorCode::kResourceExhausted, "resource_exhausted", "a size, memory or quota limit was exceeded"},
    {ErrorCode::kFailedPrecondition, "failed_precondition",
     "well-formed, but made for another state (an extension of another base model)"},
    {ErrorCode::kUnimplemented, "unimplemented", "a call this backbone does not offer"},
    {ErrorCode::kInternal, "internal", "a bug in aios or an unexpected failure of a library below it"},
    {ErrorCode::kUnavailable, "unavailable", "a device or service that cannot be reached now, or a cancelled call"},
    {ErrorCode::kDataLoss, "data_loss", "a file that is truncated, corrupt or inconsistent with itself"},
};

// The code's name in kErrorCodes ("invalid_argument", ...); "unknown" for a value not in it.
std::string_view error_code_name(ErrorCode code);

// An error with a code, the field it is about (a dotted path such as "latents", "config.rope_scaling.rope_type"
// or a tensor name; may be empty) and a message that says what was expected and what was found.
// what() reads "<code>: <field>: <message>".
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, std::string field, std::string message);

  ErrorCode code() const noexcept { return code_; }
  const std::string& field() const noexcept { return field_; }
  const std::string& message() const noexcept { return message_; }

 private:
  ErrorCode code_;
  std::string field_;
  std::string message_;
};

}  // namespace aios
AIOS_EXPORT_END
