// aios/error.h — the one error type of aios.
//
// Every failure that a caller can act on is an aios::Error carrying an ErrorCode. The numeric values
// are the gRPC status codes, so the same enum travels unchanged over the wire, and the Python module
// raises one exception class per code (aios.InvalidArgumentError, aios.NotFoundError, ...).
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace aios {

enum class ErrorCode : int {
  kInvalidArgument = 3,    // the caller passed something malformed (shape, dtype, range, config value)
  kNotFound = 5,           // a file, tensor or handle that does not exist
  kAlreadyExists = 6,      // something the caller would create exists already (a token, a name)
  kPermissionDenied = 7,   // the caller may not use this object
  kResourceExhausted = 8,  // a size or quota limit was exceeded
  kFailedPrecondition = 9,  // well-formed, but made for another state (an extension of another base model)
  kUnimplemented = 12,     // a call this backbone does not offer (a hosted one, for now, generation)
  kInternal = 13,          // a bug in aios or an unexpected failure of a library below it
  kUnavailable = 14,       // a device or service that cannot be reached now
  kDataLoss = 15,          // a file that is truncated, corrupt or inconsistent with itself
};

// "invalid_argument", "not_found", ... — stable names used in messages and by the bindings.
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
