// The code of the aios::Error a call throws, for tests (and optionally its field); fails the test
// when the call throws nothing.
#pragma once

#include <functional>
#include <string>

#include "aios/error.h"
#include "catch_torch.h"

namespace aios_test {

inline aios::ErrorCode code_of(const std::function<void()>& call, std::string* field = nullptr) {
  try {
    call();
  } catch (const aios::Error& e) {
    if (field != nullptr) *field = e.field();
    return e.code();
  }
  FAIL("expected an aios::Error");
  return aios::ErrorCode::kInternal;
}

}  // namespace aios_test
