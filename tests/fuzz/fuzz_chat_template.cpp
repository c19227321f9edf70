// Chat formatting with a template from a model file (GGUF tokenizer.chat_template): aios never
// executes it, it recognises the ChatML layout; whatever the template, rendering is bounded and
// fails only with a coded error. The input is the template, then 0xFF, then messages separated by
// 0xFE as role 0xFD content.
#include <cstdint>
#include <string>
#include <vector>

#include "aios/tokenizer_api/chat.h"
#include "fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input = aios::fuzz::bytes_of(data, size);
  const std::size_t split = input.find('\xFF');
  const std::string chat_template = input.substr(0, split);
  std::vector<aios::tokenizer::ChatMessage> messages;
  std::size_t total = 0;
  if (split != std::string::npos) {
    for (std::size_t begin = split + 1; begin <= input.size();) {
      std::size_t end = input.find('\xFE', begin);
      if (end == std::string::npos) end = input.size();
      const std::string message = input.substr(begin, end - begin);
      const std::size_t role_end = message.find('\xFD');
      messages.push_back({message.substr(0, role_end), role_end == std::string::npos ? "" : message.substr(role_end + 1)});
      total += message.size();
      begin = end + 1;
    }
  }
  for (bool prompt : {false, true}) {
    aios::fuzz::refused([&] {
      const std::string text = aios::tokenizer::render_chat(chat_template, messages, prompt);
      // Output is the messages in a fixed frame: linear in what went in, never a template's loop.
      if (text.size() > 64 * (messages.size() + 1) + 2 * (total + chat_template.size())) __builtin_trap();
    });
  }
  return 0;
}
