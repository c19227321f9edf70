#include "aios/tokenizer_api/chat.h"

#include "aios/fail.h"
#include "aios/tokenizer_api/tokenizer.h"

namespace aios::tokenizer {

namespace {

constexpr std::string_view kStart = "<|im_start|>", kEnd = "<|im_end|>";

// The system message a ChatML template writes when the first message is not a system one: the
// text between "<|im_start|>system\n" and "<|im_end|>" in the template's literal, if it has one.
std::string default_system_message(const std::string& chat_template) {
  const std::string opening = std::string(kStart) + "system\n";
  const std::size_t begin = chat_template.find(opening);
  if (begin == std::string::npos) return {};
  const std::size_t text = begin + opening.size();
  const std::size_t end = chat_template.find(kEnd, text);
  if (end == std::string::npos) return {};
  std::string message = chat_template.substr(text, end - text);
  // Template code (a variable, a tag) in between means the message is not a fixed default.
  if (message.find("{{") != std::string::npos || message.find("{%") != std::string::npos ||
      message.find('\'') != std::string::npos) {
    return {};
  }
  return message;
}

}  // namespace

std::string render_chat(const std::string& chat_template, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt) {
  if (chat_template.find(kStart) == std::string::npos || chat_template.find(kEnd) == std::string::npos) {
    fail(ErrorCode::kInvalidArgument, "chat_template",
         "expected a ChatML template (<|im_start|>role ... <|im_end|>); render other templates in Python");
  }
  std::string out;
  const std::string system = default_system_message(chat_template);
  if (!system.empty() && (messages.empty() || messages.front().role != "system")) {
    out += fmt::format("{}system\n{}{}\n", kStart, system, kEnd);
  }
  for (const ChatMessage& m : messages) out += fmt::format("{}{}\n{}{}\n", kStart, m.role, m.content, kEnd);
  if (add_generation_prompt) out += fmt::format("{}assistant\n", kStart);
  return out;
}

std::vector<int32_t> end_of_turn_ids(const Tokenizer& tokenizer) {
  std::vector<int32_t> ids;
  for (const char* token : {"<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>", "<|end_of_text|>"}) {
    const std::optional<int32_t> id = tokenizer.token_to_id(token);
    if (id && tokenizer.is_special(*id)) ids.push_back(*id);
  }
  return ids;
}

}  // namespace aios::tokenizer
