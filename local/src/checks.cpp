// LocalBackbone's argument checks: what every call verifies before it touches the model.
#include <cmath>

#include "aios/fail.h"
#include "impl.h"

namespace aios::local {

void require_defined(const at::Tensor& t, const char* name) {
  if (!t.defined()) fail(ErrorCode::kInvalidArgument, name, "expected a tensor, got an undefined one");
}

at::Tensor checked_index_tensor(const at::Tensor& t, const char* name, int64_t limit, const char* limit_name,
                                c10::Device device) {
  if (!c10::isIntegralType(t.scalar_type(), /*includeBool=*/false)) {
    fail(ErrorCode::kInvalidArgument, name, "expected an integer dtype (int64 or int32), got {}",
         backbone::dtype_name(t.scalar_type()));
  }
  at::Tensor out = t.to(device, at::kLong);
  if (out.numel() > 0) {
    const int64_t lo = out.min().item<int64_t>(), hi = out.max().item<int64_t>();
    if (lo < 0 || hi >= limit) {
      fail(ErrorCode::kInvalidArgument, name, "expected values in [0, {}) ({}), got values in [{}, {}]", limit,
           limit_name, lo, hi);
    }
  }
  return out;
}

namespace {

at::Tensor checked_bool_tensor(const at::Tensor& t, const char* name, c10::Device device) {
  if (t.scalar_type() != at::kBool && !c10::isIntegralType(t.scalar_type(), /*includeBool=*/false)) {
    fail(ErrorCode::kInvalidArgument, name, "expected a bool (or integer 0/1) dtype, got {}",
         backbone::dtype_name(t.scalar_type()));
  }
  return t.to(device).ne(0);
}

}  // namespace

backbone::Attention LocalBackbone::Impl::prepare(const at::Tensor& latents, const ali::ForwardOptions& options) const {
  const backbone::ModelConfig& c = model->config();
  require_defined(latents, "latents");
  if (latents.dim() != 3) {
    fail(ErrorCode::kInvalidArgument, "latents", "expected rank 3 [B,T,D], got shape {}", shape_of(latents));
  }
  check_states(latents, "latents");
  const int64_t B = latents.size(0), T = latents.size(1);
  if (B < 1 || T < 1) fail(ErrorCode::kInvalidArgument, "latents", "expected B >= 1 and T >= 1, got shape {}", shape_of(latents));
  if (T > c.max_positions) {
    fail(ErrorCode::kInvalidArgument, "latents", "expected at most {} positions (max_positions), got T = {}",
         c.max_positions, T);
  }
  // max|x| propagates NaN and Inf in one reduction; at::isfinite(...).all() costs ten times more.
  if (!options.allow_non_finite && !std::isfinite(latents.abs().max().item<double>())) {
    fail(ErrorCode::kInvalidArgument, "latents",
         "expected finite values, got NaN or Inf (set allow_non_finite to pass them through)");
  }

  backbone::Attention attention;
  if (options.positions && options.positions->defined()) {
    const at::Tensor& p = *options.positions;
    const bool shared = p.dim() == 1 && p.size(0) == T;
    if (!shared && !(p.dim() == 2 && p.size(0) == B && p.size(1) == T)) {
      fail(ErrorCode::kInvalidArgument, "positions", "expected shape [{},{}] or [{}], got {}", B, T, T, shape_of(p));
    }
    attention.positions = checked_index_tensor(p, "positions", c.max_positions, "max_positions", model->device());
    attention.positions = attention.positions.expand({B, T});
  } else {
    attention.positions = at::arange(T, at::TensorOptions().dtype(at::kLong).device(model->device())).expand({B, T});
  }
  if (options.mask && options.mask->defined()) {
    const at::Tensor& m = *options.mask;
    if (m.dim() == 2 && m.size(0) == B && m.size(1) == T) {
      attention.key_padding = checked_bool_tensor(m, "mask", model->device());
    } else if (m.dim() == 3 && m.size(0) == B && m.size(1) == T && m.size(2) == T) {
      if (backbone::has_recurrent_layers(c)) {
        fail(ErrorCode::kInvalidArgument, "mask",
             "expected a key-padding mask [B,T], got a full mask {}: {}'s recurrent (Gated DeltaNet) layers read every "
             "earlier valid slot of a row and cannot follow a [B,T,T] mask (no gist slots, no packed sequences)",
             shape_of(m), c.architecture);
      }
      attention.full_mask = checked_bool_tensor(m, "mask", model->device());
    } else {
      fail(ErrorCode::kInvalidArgument, "mask", "expected shape [{},{}] (key padding) or [{},{},{}] (full), got {}", B,
           T, B, T, T, shape_of(m));
    }
  }
  for (int64_t l : options.layers) {
    if (l < 0 || l > c.num_layers) {
      fail(ErrorCode::kInvalidArgument, "layers", "expected indices in [0, {}] (num_layers), got {}", c.num_layers, l);
    }
  }

  return attention;
}

void LocalBackbone::Impl::check_states(const at::Tensor& t, const char* name) const {
  require_defined(t, name);
  if (t.dim() < 1) fail(ErrorCode::kInvalidArgument, name, "expected shape [..., D], got a scalar");
  const backbone::ModelConfig& c = model->config();
  if (t.size(-1) != c.hidden_size) {
    fail(ErrorCode::kInvalidArgument, name, "expected last dimension {} (hidden size), got shape {}", c.hidden_size,
         shape_of(t));
  }
  if (t.scalar_type() != model->dtype()) {
    fail(ErrorCode::kInvalidArgument, name, "expected dtype {} (the backbone's), got {}",
         backbone::dtype_name(model->dtype()), backbone::dtype_name(t.scalar_type()));
  }
  if (t.device() != model->device()) {
    fail(ErrorCode::kInvalidArgument, name, "expected device {} (the backbone's), got {}", model->device().str(),
         t.device().str());
  }
}

void LocalBackbone::Impl::check_extension(const gradient::ForwardOptions& options, int64_t B, int64_t T) const {
  if (options.extension) options.extension->check_fits(self, "extension");
  if (!options.ids) return;
  if (!options.extension) {
    fail(ErrorCode::kInvalidArgument, "ids", "apply only with an extension (they locate its embedding rows)");
  }
  const at::Tensor& ids = *options.ids;
  if (!ids.defined() || ids.sizes() != at::IntArrayRef{B, T} || !c10::isIntegralType(ids.scalar_type(), false)) {
    fail(ErrorCode::kInvalidArgument, "ids", "expected an integer tensor [{},{}], got {}", B, T,
         ids.defined() ? shape_of(ids) : "none");
  }
}

int64_t LocalBackbone::Impl::vocabulary(const ali::Extension* extension) const {
  return model->config().vocab_size + (extension != nullptr ? extension->size() : 0);
}

}  // namespace aios::local
