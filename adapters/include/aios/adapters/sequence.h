// aios/adapters/sequence.h — assembling one latent batch from text, caller latents and gist slots.
//
// Each row is a list of segments: text ids (embedded by the backbone, with an extension's rows for
// ids >= V), caller latents [L,D] (an encoder's output), and gist slots (trainable vectors, e.g. a
// GistLatents module). Rows are concatenated, padded to the longest, and returned with everything
// ForwardOptions needs (positions, mask, ids). The latents are built with torch ops, so autograd
// flows from them to the caller's latents and the gist vectors.
//
// Layout of row b, for R = its real length and T = max R over the batch:
//   right padding: real tokens at [0, R), padding at [R, T)
//   left padding:  padding at [0, T-R), real tokens at [T-R, T)
//   positions[b,t] = 0, 1, ... over the real tokens in order; 0 at padding
//   ids[b,t]       = the token id at a text position; -1 at latents, gist slots and padding
//   latents[b,t]   = 0 at padding
// Mask, bool:
//   no gist segment in the batch: [B,T] key padding, true at real tokens (the backbone adds causal
//     order and any sliding window);
//   any gist segment (or BuildOptions::full_mask): [B,T,T], [b,t,s] true = query t may attend
//     key s. For a real query t: s real, s <= t, and, in a row with a gist segment [g0,g1),
//     not (t >= g1 and s < g0): what follows the gist slots sees what precedes them only through
//     them (ali::gist_mask). A padding query attends only itself, so no softmax row is empty.
//     A full mask replaces the backbone's sliding windows: for windowed models the caller adds them.
#pragma once

#include <memory>
#include <vector>

#include <ATen/ATen.h>

#include "aios/adapters/encoders.h"
#include "aios/export.h"
#include "aios/gradient_api/backbone.h"

AIOS_EXPORT_BEGIN

namespace aios::adapters {

struct Segment {
  enum class Kind { kText, kLatents, kGist };
  Kind kind = Kind::kText;
  at::Tensor ids;      // kText: int64/int32 [L], each in [0, V) (or [0, V+K) with the extension)
  at::Tensor latents;  // kLatents: floating [L,D]; kGist: floating [n,D], or undefined = BuildOptions::gist

  static Segment text(at::Tensor ids) { return {Kind::kText, std::move(ids), {}}; }
  static Segment latent(at::Tensor latents) { return {Kind::kLatents, {}, std::move(latents)}; }
  static Segment gist(at::Tensor latents = {}) { return {Kind::kGist, {}, std::move(latents)}; }
};
using Row = std::vector<Segment>;

enum class Padding { kRight, kLeft };

struct BuildOptions {
  Padding padding = Padding::kRight;
  // Embeds text ids in [V, V+K); also what forward_options() names for extension-row gradients.
  std::shared_ptr<const ali::Extension> extension;
  // Fills gist segments that carry no latents of their own (its n vectors each).
  GistLatents gist{nullptr};
  // Return the [B,T,T] mask even when no row has a gist segment.
  bool full_mask = false;
};

// Where segment j of a row lies in the padded batch: [begin, end) along T.
struct SegmentRange {
  Segment::Kind kind;
  int64_t begin;
  int64_t end;
};

struct Batch {
  at::Tensor latents;    // [B,T,D] in the backbone's dtype, on its device (differentiable)
  at::Tensor positions;  // int64 [B,T], on the backbone's device
  at::Tensor mask;       // bool [B,T] or [B,T,T] (see the file comment), on the backbone's device
  at::Tensor ids;        // int64 [B,T], on the backbone's device; -1 where no token was embedded
  std::vector<std::vector<SegmentRange>> segments;  // [b][j]: segment j of row b
  std::shared_ptr<const ali::Extension> extension;  // BuildOptions::extension

  // positions, mask, and with an extension, the extension and ids (for its row gradients).
  gradient::ForwardOptions forward_options() const;
};

// Assembles `rows` (B >= 1 rows, each of total length >= 1, at most one gist segment each) for
// `backbone`. Throws Error(kInvalidArgument) naming the field ("rows[b][j].ids", "rows[b][j].latents",
// "gist", ...) for a malformed segment: wrong rank, dtype or width (latents must be [L,D] with
// D = hidden size), ids out of range, a gist segment with no vectors to fill it. Layout only, no
// forward pass: the call is cheap.
Batch build_batch(ali::Backbone& backbone, const std::vector<Row>& rows, const BuildOptions& options = {});

}  // namespace aios::adapters
AIOS_EXPORT_END
