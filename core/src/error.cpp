#include <fmt/format.h>

#include "aios/error.h"

namespace aios {

std::string_view error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid_argument";
    case ErrorCode::kNotFound: return "not_found";
    case ErrorCode::kAlreadyExists: return "already_exists";
    case ErrorCode::kFailedPrecondition: return "failed_precondition";
    case ErrorCode::kPermissionDenied: return "permission_denied";
    case ErrorCode::kResourceExhausted: return "resource_exhausted";
    case ErrorCode::kUnimplemented: return "unimplemented";
    case ErrorCode::kInternal: return "internal";
    case ErrorCode::kUnavailable: return "unavailable";
    case ErrorCode::kDataLoss: return "data_loss";
  }
  return "unknown";
}

namespace {
std::string compose(ErrorCode code, const std::string& field, const std::string& message) {
  if (field.empty()) return fmt::format("{}: {}", error_code_name(code), message);
  return fmt::format("{}: {}: {}", error_code_name(code), field, message);
}
}  // namespace

Error::Error(ErrorCode code, std::string field, std::string message)
    : std::runtime_error(compose(code, field, message)),
      code_(code),
      field_(std::move(field)),
      message_(std::move(message)) {}

}  // namespace aios
