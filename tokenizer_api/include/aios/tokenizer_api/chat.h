// aios/tokenizer_api/chat.h — chat formatting with the template stored beside a model.
//
// Models store their chat format as a Jinja template. aios does not execute templates (they are
// untrusted text); it recognises the ChatML layout the template describes — SmolLM2's and
// Qwen2's: "<|im_start|>ROLE\nCONTENT<|im_end|>\n" per message, "<|im_start|>assistant\n" to
// prompt a reply, and the default system message the template inserts when the conversation has
// none. Other layouts are an Error(kInvalidArgument) naming the template; Python can render any
// template in a sandbox (aios.apply_chat_template).
#pragma once

#include <string>
#include <vector>

#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios::tokenizer {

class Tokenizer;

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

// The text of `messages` in the template's format, ending with the reply prompt when
// add_generation_prompt is set.
std::string render_chat(const std::string& chat_template, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt = true);

// The special tokens of `tokenizer` that end a turn or a text ("<|im_end|>", "<|endoftext|>",
// "</s>", "<|eot_id|>", "<|end_of_text|>", whichever it has): where generation of a reply stops.
std::vector<int32_t> end_of_turn_ids(const Tokenizer& tokenizer);

}  // namespace aios::tokenizer
AIOS_EXPORT_END
