// Internal: a stage worker's serving loop over its share of the blocks.
#pragma once

#include <chrono>

#include "aios/backbone/model.h"
#include "link.h"
#include "protocol.h"

namespace aios::pipeline {

// Serves the front's requests until it says kShutdown (returns) or the link is lost (throws
// Error(kUnavailable)). `model` holds blocks [layout.first(rank), layout.end(rank)).
void serve_requests(Link& link, const backbone::Model& model, const Layout& layout, std::chrono::milliseconds timeout);

}  // namespace aios::pipeline
