// The C++ adapters for the Python package (aios.adapters): the sequence builder, and the folders of
// encoders and decoders written and read by the same code as C++'s. Python keeps what must be
// Python: its nn.Module classes and the registries of their factories.
#include <fmt/format.h>

#include "aios/adapters/audio.h"
#include "aios/adapters/sequence.h"
#include "aios/adapters/storage.h"
#include "aios/fail.h"
#include "bindings.h"

namespace aios::python {
namespace {

using adapters::Segment;

// ("text", int tensor [L]), ("latents", floating [L,D]) or ("gist", floating [n,D]).
Segment segment(const std::pair<std::string, std::optional<at::Tensor>>& s, std::size_t b, std::size_t j) {
  const std::string& kind = s.first;
  const at::Tensor tensor = s.second.value_or(at::Tensor());
  if (kind == "text") return Segment::text(tensor);
  if (kind == "latents") return Segment::latent(tensor);
  if (kind == "gist") return Segment::gist(tensor);
  fail(ErrorCode::kInvalidArgument, fmt::format("rows[{}][{}]", b, j), "expected text, latents or gist, got {}", kind);
}

const char* kind_name(Segment::Kind kind) {
  switch (kind) {
    case Segment::Kind::kText: return "text";
    case Segment::Kind::kLatents: return "latents";
    case Segment::Kind::kGist: return "gist";
  }
  return "?";
}

using Save = void (*)(const std::map<std::string, at::Tensor>&, const adapters::AdapterManifest&, const std::string&);
using ReadManifest = adapters::AdapterManifest (*)(const std::string&);
using Read = adapters::StoredAdapter (*)(const std::string&);

// save_NOUN_tensors, read_NOUN_manifest and read_NOUN: the folders of encoders or decoders.
void bind_folders(py::module_& m, const std::string& noun, Save save, ReadManifest read_manifest, Read read) {
  m.def(
      ("save_" + noun + "_tensors").c_str(),
      [save](const std::map<std::string, at::Tensor>& tensors, const std::string& kind,
             const std::map<std::string, int64_t>& sizes, const std::string& path) { save(tensors, {kind, sizes}, path); },
      py::arg("tensors"), py::arg("kind"), py::arg("sizes"), py::arg("path"), py::call_guard<py::gil_scoped_release>(),
      ("writes tensors by name as the " + noun + " folder path (manifest + weights), atomically").c_str());
  m.def(
      ("read_" + noun + "_manifest").c_str(),
      [read_manifest](const std::string& path) {
        const adapters::AdapterManifest manifest = read_manifest(path);
        return py::make_tuple(manifest.kind, manifest.sizes);
      },
      py::arg("path"), ("(kind, sizes) of the " + noun + " folder path").c_str());
  m.def(
      ("read_" + noun).c_str(),
      [read](const std::string& path) {
        const adapters::StoredAdapter s = read(path);
        return py::make_tuple(s.manifest.kind, s.manifest.sizes, s.tensors);
      },
      py::arg("path"),
      ("(kind, sizes, tensors by name) of the " + noun + " folder path, its weights checked (CRC-32, structure, sizes)").c_str());
}

}  // namespace

void bind_adapters(py::module_& m) {
  m.def(
      "build_batch",
      [](gradient::Backbone& backbone, const std::vector<std::vector<std::pair<std::string, std::optional<at::Tensor>>>>& rows,
         const std::string& padding, std::shared_ptr<ali::Extension> extension, bool full_mask) {
        adapters::BuildOptions options;
        if (padding == "left") {
          options.padding = adapters::Padding::kLeft;
        } else if (padding != "right") {
          fail(ErrorCode::kInvalidArgument, "padding", "expected 'right' or 'left', got '{}'", padding);
        }
        options.extension = std::move(extension);
        options.full_mask = full_mask;
        std::vector<adapters::Row> segments(rows.size());
        for (std::size_t b = 0; b < rows.size(); ++b) {
          for (std::size_t j = 0; j < rows[b].size(); ++j) segments[b].push_back(segment(rows[b][j], b, j));
        }
        adapters::Batch batch;
        {
          py::gil_scoped_release release;
          batch = adapters::build_batch(backbone, segments, options);
        }
        py::list ranges;
        for (const auto& row : batch.segments) {
          py::list out;
          for (const adapters::SegmentRange& r : row) out.append(py::make_tuple(kind_name(r.kind), r.begin, r.end));
          ranges.append(out);
        }
        return py::make_tuple(batch.latents, batch.positions, batch.mask, batch.ids, ranges);
      },
      py::arg("backbone"), py::arg("rows"), py::arg("padding"), py::arg("extension"), py::arg("full_mask"),
      "(latents, positions, mask, ids, segments) of rows of (kind, tensor) segments (aios/adapters/sequence.h); "
      "a gist segment's tensor may be None only without gist vectors to fill it (an error)");

  auto features = [](int64_t sample_rate, int64_t n_fft, int64_t hop_length, int64_t n_mels) {
    return adapters::LogMelOptions{sample_rate, n_fft, hop_length, n_mels};
  };
  m.def(
      "log_mel",
      [features](const at::Tensor& waveform, int64_t sample_rate, int64_t n_fft, int64_t hop_length, int64_t n_mels) {
        return adapters::log_mel(waveform, features(sample_rate, n_fft, hop_length, n_mels));
      },
      py::arg("waveform"), py::arg("sample_rate"), py::arg("n_fft"), py::arg("hop_length"), py::arg("n_mels"),
      py::call_guard<py::gil_scoped_release>(), "float32 log-mel features [(B,)F,n_mels] of waveform [(B,)N] (aios/adapters/audio.h)");
  m.def(
      "mel_filters",
      [features](int64_t sample_rate, int64_t n_fft, int64_t hop_length, int64_t n_mels) {
        return adapters::mel_filters(features(sample_rate, n_fft, hop_length, n_mels));
      },
      py::arg("sample_rate"), py::arg("n_fft"), py::arg("hop_length"), py::arg("n_mels"),
      "float32 [n_mels, n_fft/2+1]: the triangular filters log_mel applies");

  bind_folders(m, "encoder", &adapters::save_encoder_tensors, &adapters::read_encoder_manifest, &adapters::read_encoder);
  bind_folders(m, "decoder", &adapters::save_decoder_tensors, &adapters::read_decoder_manifest, &adapters::read_decoder);
}

}  // namespace aios::python
