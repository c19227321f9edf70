// The writer that tests/cpp/test_host_process.cpp kills at random moments: it saves a vocabulary
// extension (ali::Extension::save) and a decoder (adapters::save_decoder) over and over, each
// version filled with its own number, and says in a progress file which save it begins and ends.
//
//   aios_crash_writer MODEL FOLDER PROGRESS FIRST_VERSION
//
// Progress lines: "e N" before saving version N of FOLDER/extension, "E N" after; "d N", "D N"
// for FOLDER/decoder. Each line is one write(2) to a file opened for appending, so that what the
// file says has happened when the process is killed.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "aios/adapters/storage.h"
#include "aios/local/local_backbone.h"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fputs("usage: aios_crash_writer MODEL FOLDER PROGRESS FIRST_VERSION\n", stderr);
    return 2;
  }
  const std::string folder = argv[2];
  const int progress = ::open(argv[3], O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (progress < 0) return 1;
  auto say = [&](char what, int64_t version) {
    const std::string line = fmt::format("{} {}\n", what, version);
    if (::write(progress, line.data(), line.size()) != static_cast<ssize_t>(line.size())) std::exit(1);
  };
  try {
    auto backbone = aios::local::LocalBackbone::load(argv[1]);
    // Large enough that a save takes a while (a few hundred kB each), so that kills land inside it.
    std::vector<std::string> tokens;
    for (int i = 0; i < 1024; ++i) tokens.push_back(fmt::format("<t{}>", i));
    auto extension = backbone->extend(tokens);
    aios::adapters::LinearDecoder decoder(backbone->config().hidden_size, 2048);
    torch::NoGradGuard no_grad;
    for (int64_t version = std::stoll(argv[4]);; ++version) {
      extension->embedding_rows().fill_(static_cast<double>(version));
      extension->classifier_rows().fill_(-static_cast<double>(version));
      say('e', version);
      extension->save(folder + "/extension");
      say('E', version);
      for (auto& p : decoder->parameters()) p.fill_(static_cast<double>(version));
      say('d', version);
      aios::adapters::save_decoder(decoder, folder + "/decoder");
      say('D', version);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "aios_crash_writer: %s\n", e.what());
    return 1;
  }
}
