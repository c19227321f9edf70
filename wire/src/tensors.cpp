#include "aios/wire/tensors.h"

#include <cstring>

#include "aios/fail.h"

namespace aios::wire {

at::ScalarType torch_dtype(v1::DType dtype) {
  switch (dtype) {
    case v1::FLOAT32: return at::kFloat;
    case v1::BFLOAT16: return at::kBFloat16;
    case v1::FLOAT16: return at::kHalf;
    case v1::INT32: return at::kInt;
    case v1::INT64: return at::kLong;
    case v1::BOOL: return at::kBool;
    default: return at::kFloat;  // unreachable: check_tensor rejects other values
  }
}

v1::DType wire_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return v1::FLOAT32;
    case at::kBFloat16: return v1::BFLOAT16;
    case at::kHalf: return v1::FLOAT16;
    case at::kInt: return v1::INT32;
    case at::kLong: return v1::INT64;
    case at::kBool: return v1::BOOL;
    default: fail(ErrorCode::kInvalidArgument, "tensor", "no wire form for dtype {}", c10::toString(dtype));
  }
}

at::Tensor to_torch(const v1::Tensor& t, const std::string& field, const TensorLimits& limits) {
  const CheckedTensor w = check_tensor(t, field, limits);
  at::Tensor out = at::empty(w.shape, at::TensorOptions().dtype(torch_dtype(w.dtype)));
  if (w.size_bytes > 0) std::memcpy(out.data_ptr(), w.data, w.size_bytes);
  if (w.dtype == v1::BOOL && out.numel() > 0 && out.view(at::kByte).gt(1).any().item<bool>()) {
    fail(ErrorCode::kInvalidArgument, field + ".data", "expected bool bytes of 0 or 1");
  }
  return out;
}

void to_wire(const at::Tensor& t, v1::Tensor* out) {
  at::Tensor cpu = t.detach().to(at::kCPU);
  if (cpu.scalar_type() == at::kDouble) cpu = cpu.to(at::kFloat);
  // Other integer dtypes (uint8 or int16 masks, ...) travel as int64: the same values.
  if (c10::isIntegralType(cpu.scalar_type(), /*includeBool=*/false) && cpu.scalar_type() != at::kInt) cpu = cpu.to(at::kLong);
  cpu = cpu.contiguous();
  out->set_dtype(wire_dtype(cpu.scalar_type()));
  out->clear_shape();
  for (int64_t d : cpu.sizes()) out->add_shape(d);
  out->set_data(cpu.data_ptr(), static_cast<std::size_t>(cpu.nbytes()));
}

}  // namespace aios::wire
