// Tensor messages <-> at::Tensor (internal: aios_wire_torch, for the host and RemoteBackbone).
#pragma once

#include <string>

#include <ATen/ATen.h>

#include "aios/export.h"
#include "aios/wire/wire.h"

// Exported for aios_remote and aios_server, which convert through it (not an installed header).
AIOS_EXPORT_BEGIN

namespace aios::wire {

// The torch dtype of a wire dtype (a known one: check_tensor or itemsize() first) and back; a torch
// dtype with no wire form (complex, ...) is Error(kInvalidArgument).
at::ScalarType torch_dtype(v1::DType dtype);
v1::DType wire_dtype(at::ScalarType dtype);

// A checked Tensor message as a new CPU tensor that owns its bytes (the message may go away).
at::Tensor to_torch(const v1::Tensor& t, const std::string& field, const TensorLimits& limits);
// Writes `t` (any device; float64 travels as float32, integer dtypes other than int32 as int64)
// into `out`.
void to_wire(const at::Tensor& t, v1::Tensor* out);

}  // namespace aios::wire
AIOS_EXPORT_END
