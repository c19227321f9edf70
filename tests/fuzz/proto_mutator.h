// tests/fuzz/proto_mutator.h — a structure-aware mutator for protobuf messages, through
// reflection: it changes one field of a parsed message (integers to edge values, shapes and
// dtypes of Tensor messages, bytes cut or grown, strings, repeated fields added or removed,
// sub-messages set or cleared) and serialises it again, so that requests stay parseable and reach
// the host's checks instead of stopping at the protobuf parser.
#pragma once

#include <cstdint>
#include <random>

#include <google/protobuf/message.h>

namespace aios::fuzz {

void mutate_message(google::protobuf::Message& message, std::minstd_rand& rng, int depth = 0);

}  // namespace aios::fuzz
