#include <catch2/catch.hpp>

#include "aios/fail.h"

using aios::Error;
using aios::ErrorCode;

TEST_CASE("error codes are the gRPC status numbers") {
  CHECK(static_cast<int>(ErrorCode::kInvalidArgument) == 3);
  CHECK(static_cast<int>(ErrorCode::kNotFound) == 5);
  CHECK(static_cast<int>(ErrorCode::kAlreadyExists) == 6);
  CHECK(static_cast<int>(ErrorCode::kFailedPrecondition) == 9);
  CHECK(static_cast<int>(ErrorCode::kPermissionDenied) == 7);
  CHECK(static_cast<int>(ErrorCode::kResourceExhausted) == 8);
  CHECK(static_cast<int>(ErrorCode::kInternal) == 13);
  CHECK(static_cast<int>(ErrorCode::kUnavailable) == 14);
  CHECK(static_cast<int>(ErrorCode::kDataLoss) == 15);
  CHECK(aios::error_code_name(ErrorCode::kDataLoss) == "data_loss");
}

TEST_CASE("fail() formats the message and keeps code and field apart") {
  try {
    aios::fail(ErrorCode::kInvalidArgument, "latents", "expected rank {}, got rank {}", 3, 2);
    FAIL("fail() returned");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kInvalidArgument);
    CHECK(e.field() == "latents");
    CHECK(e.message() == "expected rank 3, got rank 2");
    CHECK(std::string(e.what()) == "invalid_argument: latents: expected rank 3, got rank 2");
  }
  const Error no_field(ErrorCode::kInternal, "", "boom");
  CHECK(std::string(no_field.what()) == "internal: boom");
}
