// Internal: the tokenizer.json text equivalent to the tokenizer stored in a GGUF file's metadata.
#pragma once

#include <string>

#include "aios/io/gguf.h"

namespace aios::tokenizer {

// Built as transformers builds a tokenizer from the same file (AutoTokenizer with gguf_file), so
// that ids agree. Throws Error: kInvalidArgument (a tokenizer.ggml.model other than gpt2 or llama),
// kDataLoss (missing or inconsistent tokenizer.ggml.* keys, naming the key; a SentencePiece token
// or a merge that is not UTF-8).
std::string gguf_tokenizer_json(const io::GgufFile& file);

}  // namespace aios::tokenizer
