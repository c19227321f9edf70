#include "proto_mutator.h"

#include <cstdint>
#include <string>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/reflection.h>

namespace aios::fuzz {

namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

std::int64_t edge_integer(std::minstd_rand& rng) {
  static const std::int64_t kValues[] = {0, 1, -1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 49, 50, 51, 64, 128, 255,
                                         256, 1023, 1024, 4096, 65535, 65536, 1 << 20, 1 << 24, (1ll << 31) - 1,
                                         1ll << 31, 1ll << 32, 1ll << 40, 1ll << 62, INT64_MAX, INT64_MIN};
  return kValues[rng() % std::size(kValues)];
}

std::string edge_bytes(const std::string& current, std::minstd_rand& rng) {
  switch (rng() % 6) {
    case 0: return "";
    case 1: return current.substr(0, current.empty() ? 0 : rng() % current.size());  // cut
    case 2: return current + std::string(1 + rng() % 64, static_cast<char>(rng()));  // grown
    case 3: {  // a NaN, an infinity or a huge value among float32 data
      std::string s = current;
      static const std::uint32_t kFloats[] = {0x7FC00000u, 0x7F800000u, 0xFF800000u, 0x7F7FFFFFu, 0x00000001u};
      const std::uint32_t f = kFloats[rng() % std::size(kFloats)];
      if (s.size() >= 4) {
        const std::size_t at = (rng() % (s.size() / 4)) * 4;
        for (int i = 0; i < 4; ++i) s[at + static_cast<std::size_t>(i)] = static_cast<char>((f >> (8 * i)) & 0xff);
      }
      return s;
    }
    case 4: {
      std::string s = current;
      if (!s.empty()) s[rng() % s.size()] = static_cast<char>(rng());
      return s;
    }
    default: {
      static const char* const kNames[] = {"a", "tok", "../x", ".hidden", "decoder.json", "weights.safetensors",
                                           "/aios.v1.Latent/Forward", "/aios.v1.Gradient/Vjp", "<sox>", "<eox>",
                                           "\xff\xfe", "x:1", "ext-0", "name with space"};
      return kNames[rng() % std::size(kNames)];
    }
  }
}

void mutate_field(Message& m, const FieldDescriptor* f, std::minstd_rand& rng, int depth) {
  const Reflection* r = m.GetReflection();
  if (f->is_repeated()) {
    const int size = r->FieldSize(m, f);
    const int op = static_cast<int>(rng() % 4);
    if (op == 0 && size > 0) {  // remove the last
      r->RemoveLast(&m, f);
      return;
    }
    if (op == 1 || size == 0) {  // add one
      switch (f->cpp_type()) {
        case FieldDescriptor::CPPTYPE_INT32: r->AddInt32(&m, f, static_cast<std::int32_t>(edge_integer(rng))); break;
        case FieldDescriptor::CPPTYPE_INT64: r->AddInt64(&m, f, edge_integer(rng)); break;
        case FieldDescriptor::CPPTYPE_UINT64: r->AddUInt64(&m, f, static_cast<std::uint64_t>(edge_integer(rng))); break;
        case FieldDescriptor::CPPTYPE_STRING: r->AddString(&m, f, edge_bytes("", rng)); break;
        case FieldDescriptor::CPPTYPE_MESSAGE: {
          Message* added = r->AddMessage(&m, f);
          if (size > 0) added->CopyFrom(r->GetRepeatedMessage(m, f, static_cast<int>(rng() % size)));
          break;
        }
        default: break;
      }
      return;
    }
    const int i = static_cast<int>(rng() % size);
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32: r->SetRepeatedInt32(&m, f, i, static_cast<std::int32_t>(edge_integer(rng))); break;
      case FieldDescriptor::CPPTYPE_INT64: r->SetRepeatedInt64(&m, f, i, edge_integer(rng)); break;
      case FieldDescriptor::CPPTYPE_UINT64: r->SetRepeatedUInt64(&m, f, i, static_cast<std::uint64_t>(edge_integer(rng))); break;
      case FieldDescriptor::CPPTYPE_STRING: r->SetRepeatedString(&m, f, i, edge_bytes(r->GetRepeatedString(m, f, i), rng)); break;
      case FieldDescriptor::CPPTYPE_MESSAGE: mutate_message(*r->MutableRepeatedMessage(&m, f, i), rng, depth + 1); break;
      default: break;
    }
    return;
  }
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32: r->SetInt32(&m, f, static_cast<std::int32_t>(edge_integer(rng))); break;
    case FieldDescriptor::CPPTYPE_INT64: r->SetInt64(&m, f, edge_integer(rng)); break;
    case FieldDescriptor::CPPTYPE_UINT32: r->SetUInt32(&m, f, static_cast<std::uint32_t>(edge_integer(rng))); break;
    case FieldDescriptor::CPPTYPE_UINT64: r->SetUInt64(&m, f, static_cast<std::uint64_t>(edge_integer(rng))); break;
    case FieldDescriptor::CPPTYPE_BOOL: r->SetBool(&m, f, !r->GetBool(m, f)); break;
    case FieldDescriptor::CPPTYPE_DOUBLE: {
      static const double kValues[] = {0.0, -1.0, 0.5, 1.0, 2.0, 1e-30, 1e30, 1e308, -1e308, 100.0};
      r->SetDouble(&m, f, kValues[rng() % std::size(kValues)]);
      break;
    }
    case FieldDescriptor::CPPTYPE_FLOAT: r->SetFloat(&m, f, static_cast<float>(edge_integer(rng))); break;
    case FieldDescriptor::CPPTYPE_ENUM: r->SetEnumValue(&m, f, static_cast<int>(rng() % 9)); break;  // 7, 8: unknown
    case FieldDescriptor::CPPTYPE_STRING: r->SetString(&m, f, edge_bytes(r->GetString(m, f), rng)); break;
    case FieldDescriptor::CPPTYPE_MESSAGE:
      if (rng() % 5 == 0) r->ClearField(&m, f);
      else mutate_message(*r->MutableMessage(&m, f), rng, depth + 1);
      break;
  }
}

}  // namespace

void mutate_message(Message& message, std::minstd_rand& rng, int depth) {
  const auto* d = message.GetDescriptor();
  std::vector<const FieldDescriptor*> fields;
  for (int i = 0; i < d->field_count(); ++i) fields.push_back(d->field(i));
  if (fields.empty()) return;
  // Descend into a set sub-message more often than changing this level, so deep fields get reached.
  const FieldDescriptor* f = fields[rng() % fields.size()];
  if (depth > 6 && f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) return;
  mutate_field(message, f, rng, depth);
}

}  // namespace aios::fuzz
