// Internal: one factory per architecture family, each in its own file.
#pragma once

#include <memory>

#include "aios/backbone/model.h"
#include "weights.h"

namespace aios::backbone {

std::unique_ptr<Model> make_llama(const ModelConfig& config, const WeightSource& weights, const LoadOptions& options);
std::unique_ptr<Model> make_gemma(const ModelConfig& config, const WeightSource& weights, const LoadOptions& options);
std::unique_ptr<Model> make_qwen3_next(const ModelConfig& config, const WeightSource& weights, const LoadOptions& options);
std::unique_ptr<Model> make_gpt2(const ModelConfig& config, const WeightSource& weights, const LoadOptions& options);

}  // namespace aios::backbone
