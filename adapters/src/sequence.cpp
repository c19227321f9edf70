#include "aios/adapters/sequence.h"

#include <algorithm>
#include <string>

#include <fmt/ranges.h>

#include "aios/ali/masks.h"
#include "aios/fail.h"

namespace aios::adapters {
namespace {

std::string describe(const at::Tensor& t) {
  if (!t.defined()) return "none";
  return fmt::format("{} [{}]", c10::toString(t.scalar_type()), fmt::join(t.sizes(), ","));
}

// A floating [L,D] tensor, else Error naming `field`.
void require_rows(const at::Tensor& t, int64_t D, const std::string& field) {
  if (!t.defined() || t.dim() != 2 || t.size(1) != D || !c10::isFloatingType(t.scalar_type())) {
    fail(ErrorCode::kInvalidArgument, field, "expected a floating tensor [L,{}] (D = the backbone's hidden size), got {}",
         D, describe(t));
  }
}

}  // namespace

gradient::ForwardOptions Batch::forward_options() const {
  gradient::ForwardOptions o;
  o.positions = positions;
  o.mask = mask;
  if (extension) {
    o.extension = extension;
    o.ids = ids;
  }
  return o;
}

Batch build_batch(ali::Backbone& backbone, const std::vector<Row>& rows, const BuildOptions& options) {
  if (rows.empty()) fail(ErrorCode::kInvalidArgument, "rows", "expected at least one row, got none");
  const int64_t D = backbone.config().hidden_size;
  const int64_t limit = backbone.config().vocab_size + (options.extension ? options.extension->size() : 0);
  if (options.gist) {
    try {
      options.gist->check_fits(backbone);
    } catch (const Error& e) {
      fail(e.code(), "gist." + e.field(), "{}", e.message());
    }
  }
  const auto device = backbone.device();
  const auto dtype = backbone.dtype();
  const int64_t B = static_cast<int64_t>(rows.size());

  // Pass 1: check every segment and measure the rows; the text of all rows goes to one embed call.
  std::vector<int64_t> lengths(B, 0), gist_begin(B, 0), gist_end(B, 0);
  std::vector<at::Tensor> text_ids;
  bool any_gist = false;
  for (int64_t b = 0; b < B; ++b) {
    bool row_gist = false;
    for (std::size_t j = 0; j < rows[b].size(); ++j) {
      const Segment& s = rows[b][j];
      const std::string field = fmt::format("rows[{}][{}]", b, j);
      int64_t L = 0;
      switch (s.kind) {
        case Segment::Kind::kText: {
          if (!s.ids.defined() || s.ids.dim() != 1 || !c10::isIntegralType(s.ids.scalar_type(), false)) {
            fail(ErrorCode::kInvalidArgument, field + ".ids", "expected an integer tensor [L], got {}", describe(s.ids));
          }
          const at::Tensor ids = s.ids.to(at::kLong).cpu();
          if (ids.numel() > 0 && (ids.min().item<int64_t>() < 0 || ids.max().item<int64_t>() >= limit)) {
            fail(ErrorCode::kInvalidArgument, field + ".ids", "expected ids in [0, {}) ({}), got [{}, {}]", limit,
                 options.extension ? "vocab_size + extension size" : "vocab_size", ids.min().item<int64_t>(),
                 ids.max().item<int64_t>());
          }
          text_ids.push_back(ids);
          L = ids.size(0);
          break;
        }
        case Segment::Kind::kLatents:
          require_rows(s.latents, D, field + ".latents");
          L = s.latents.size(0);
          break;
        case Segment::Kind::kGist: {
          if (row_gist) {
            fail(ErrorCode::kInvalidArgument, field, "expected at most one gist segment per row, got a second one");
          }
          row_gist = any_gist = true;
          if (s.latents.defined()) {
            require_rows(s.latents, D, field + ".latents");
            L = s.latents.size(0);
          } else if (options.gist) {
            L = options.gist->options.count;
          } else {
            fail(ErrorCode::kInvalidArgument, "gist", "expected a GistLatents module (BuildOptions::gist) to fill {}, got none",
                 field);
          }
          gist_begin[b] = lengths[b];
          gist_end[b] = lengths[b] + L;
          break;
        }
      }
      lengths[b] += L;
    }
    if (lengths[b] == 0) fail(ErrorCode::kInvalidArgument, fmt::format("rows[{}]", b), "expected at least one position, got none");
  }
  const int64_t T = *std::max_element(lengths.begin(), lengths.end());

  at::Tensor embedded;  // [N,D]: every text segment in order
  if (!text_ids.empty()) {
    const at::Tensor all = at::cat(text_ids);
    if (all.numel() > 0) embedded = backbone.embed(all.unsqueeze(0), options.extension.get()).squeeze(0);
  }

  // Pass 2: the tensors, row by row.
  Batch batch;
  batch.extension = options.extension;
  at::Tensor positions = at::zeros({B, T}, at::kLong), ids = at::full({B, T}, -1, at::kLong);
  at::Tensor valid = at::zeros({B, T}, at::kBool);
  const auto state = at::TensorOptions().dtype(dtype).device(device);
  std::vector<at::Tensor> latent_rows;
  int64_t text_offset = 0, text_index = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t pad = T - lengths[b], start = options.padding == Padding::kLeft ? pad : 0;
    std::vector<at::Tensor> pieces;
    if (options.padding == Padding::kLeft && pad > 0) pieces.push_back(at::zeros({pad, D}, state));
    positions[b].narrow(0, start, lengths[b]).copy_(at::arange(lengths[b], at::kLong));
    valid[b].narrow(0, start, lengths[b]).fill_(true);
    int64_t at_t = start;
    std::vector<SegmentRange> ranges;
    for (const Segment& s : rows[b]) {
      at::Tensor piece;
      switch (s.kind) {
        case Segment::Kind::kText: {
          const at::Tensor& t = text_ids[text_index++];
          piece = embedded.defined() ? embedded.narrow(0, text_offset, t.size(0)) : at::zeros({0, D}, state);
          text_offset += t.size(0);
          ids[b].narrow(0, at_t, t.size(0)).copy_(t);
          break;
        }
        case Segment::Kind::kLatents:
          piece = s.latents;
          break;
        case Segment::Kind::kGist:
          piece = s.latents.defined() ? s.latents : options.gist->latents;
          break;
      }
      piece = piece.to(state);  // differentiable: gradients reach the caller's dtype and device
      ranges.push_back({s.kind, at_t, at_t + piece.size(0)});
      at_t += piece.size(0);
      pieces.push_back(piece);
    }
    if (options.padding == Padding::kRight && pad > 0) pieces.push_back(at::zeros({pad, D}, state));
    latent_rows.push_back(at::cat(pieces));
    batch.segments.push_back(std::move(ranges));
    if (options.padding == Padding::kLeft) {
      gist_begin[b] += pad;
      gist_end[b] += pad;
    }
  }
  batch.latents = at::stack(latent_rows);
  batch.positions = positions.to(device);
  batch.ids = ids.to(device);
  if (any_gist || options.full_mask) {
    const at::Tensor gist = ali::gist_mask(T, at::tensor(gist_begin, at::kLong), at::tensor(gist_end, at::kLong));
    const at::Tensor real = valid.unsqueeze(1).logical_and(valid.unsqueeze(2));                // [B,T,T]
    const at::Tensor self = at::eye(T, at::kBool).unsqueeze(0).logical_and(valid.logical_not().unsqueeze(2));
    batch.mask = gist.logical_and(real).logical_or(self).to(device);
  } else {
    batch.mask = valid.to(device);
  }
  return batch;
}

}  // namespace aios::adapters
