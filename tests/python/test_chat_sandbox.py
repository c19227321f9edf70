"""aios.apply_chat_template: a chat template from a model file is untrusted code.

Real templates render exactly as transformers' tokenizer.apply_chat_template does; a template cannot reach
Python internals, files or processes; every way of spending time or memory we know of is refused within the
deadline and without the memory; the fuzzer's corpus (tests/fuzz/corpus/fuzz_chat_template_py) replays clean.
"""
import importlib.util
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import jinja2
import pytest

import aios
from aios.text import ChatTemplateError

REPO = Path(__file__).resolve().parents[2]
FUZZ = REPO / "tests" / "fuzz"
MIB = 1 << 20
# Refusals must come within the deadline plus this (the tracer checks each line; the sandbox's own loops are
# bounded by max_output_chars and run untraced), generously, for a loaded 2-core machine.
MARGIN_S = 2.5
MEMORY_BOUND = 100 * MIB


@pytest.fixture(scope="module")
def reference():
    """transformers' tokenizer of the default model, whose apply_chat_template is the reference rendering."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.environ.get("AIOS_DEFAULT_MODEL") or
                                         REPO / ".cache" / "models" / "smollm2-135m-instruct")


@pytest.fixture(scope="module")
def smollm2_template(reference):
    return reference.chat_template


def render_both(reference, template, messages, add_generation_prompt=True, **kwargs):
    ours = aios.apply_chat_template(template, messages, add_generation_prompt, **reference.special_tokens_map,
                                    **kwargs)
    theirs = reference.apply_chat_template(messages, chat_template=template, tokenize=False,
                                           add_generation_prompt=add_generation_prompt, **kwargs)
    return ours, theirs


# -- real templates ------------------------------------------------------------------------------------------------
# Written for these tests in the style of the families' published templates (the features they use: bos_token,
# strftime_now, tojson with indent, raise_exception, namespace, loop state, tool calls, reasoning, generation).

LLAMA3 = """{{- bos_token }}
{%- if custom_tools is defined %}{%- set tools = custom_tools %}{%- endif %}
{%- if not tools_in_user_message is defined %}{%- set tools_in_user_message = true %}{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}{%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{%- endif %}
{%- if not tools is defined %}{%- set tools = none %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}{{- "Environment: ipython\\n" }}{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- if tools_in_user_message and not tools is none %}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, respond with a JSON for a function call.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN2 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object within <tool_call></tool_call> XML tags.<|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

MISTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

DEEPSEEK = """{%- set ns = namespace(system_prompt='', is_tool=false, last_user=-1) -%}
{%- for message in messages -%}
    {%- if message['role'] == 'system' -%}{%- set ns.system_prompt = ns.system_prompt + message['content'] -%}{%- endif -%}
    {%- if message['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}
{%- endfor -%}
{{- bos_token }}{{ ns.system_prompt }}
{%- for message in messages -%}
    {%- if message['role'] == 'user' -%}
        {{- '<\uff5cUser\uff5c>' + message['content'] -}}
    {%- elif message['role'] == 'assistant' -%}
        {%- set content = message['content'] -%}
        {%- if '</think>' in content -%}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') -%}
        {%- endif -%}
        {%- if message.reasoning_content is defined and loop.index0 > ns.last_user -%}
            {{- '<think>\\n' + message.reasoning_content.strip() + '\\n</think>\\n' -}}
        {%- endif -%}
        {{- '<\uff5cAssistant\uff5c>' + content + '<\uff5cend\u2581of\u2581sentence\uff5c>' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<\uff5cAssistant\uff5c><think>\\n' -}}{%- endif -%}
"""

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' }}{% if role == 'model' %}{% generation %}"
    "{{ message['content'] | trim }}{% endgeneration %}{% else %}{{ message['content'] | trim }}{% endif %}"
    "{{ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

# Qwen3: reasoning split out of the content at </think>, kept only after the last real user turn,
# the reverse scan for it, enable_thinking.
QWEN3 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
    {{- "# Tools\\n\\nYou may call functions.\\n\\n<tools>" }}
    {%- for tool in tools %}{{- "\\n" + (tool | tojson) }}{%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string
          and not (message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = message.content if message.content is string else '' %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}
        {%- if loop.index0 > ns.last_query_index and (loop.last or reasoning) %}
            {{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
        {%- else %}
            {{- '<|im_start|>assistant\\n' + content }}
        {%- endif %}
        {%- for call in message.tool_calls or [] %}
            {%- if not loop.first or content %}{{- '\\n' }}{%- endif %}
            {%- set f = call.function if call.function is defined else call %}
            {{- '<tool_call>\\n{"name": "' + f.name + '", "arguments": ' }}
            {{- f.arguments if f.arguments is string else f.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or messages[loop.index0 - 1].role != "tool" %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != "tool" %}{{- '<|im_end|>\\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}
{%- endif %}"""

# Phi-3: role tags closed by <|end|>, eos after a conversation without a prompt.
PHI3 = ("{{ bos_token }}{% for message in messages %}{% if message['role'] in ['system', 'user', 'assistant'] %}"
        "{{ '<|' + message['role'] + '|>\\n' + (message['content'] or '') + '<|end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}")

# OLMo 2: role tags, eos after each assistant turn, the prompt inside the loop's last step.
OLMO2 = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
         "{{ '<|system|>\\n' + message['content'] + '\\n' }}{% elif message['role'] == 'user' %}"
         "{{ '<|user|>\\n' + message['content'] + '\\n' }}{% elif message['role'] == 'assistant' %}"
         "{{ '<|assistant|>\\n' + (message['content'] or '') + eos_token + ('' if loop.last else '\\n') }}{% endif %}"
         "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}{% endfor %}")

# SmolLM3: a metadata system turn with today's date, /think and /no_think flags read out of the system
# prompt and removed from it, empty think blocks in no-think mode.
SMOLLM3 = """{%- set ns = namespace(mode="/think", instructions="") %}
{%- if messages[0].role == "system" %}
    {%- set system = messages[0].content %}
    {%- if "/no_think" in system %}{%- set ns.mode = "/no_think" %}{%- endif %}
    {%- set ns.instructions = system.replace("/no_think", "").replace("/think", "").rstrip() %}
{%- endif %}
{%- if enable_thinking is defined and enable_thinking is false %}{%- set ns.mode = "/no_think" %}{%- endif %}
{{- "<|im_start|>system\\n## Metadata\\n\\nKnowledge Cutoff Date: June 2025\\nToday Date: " + strftime_now("%d %B %Y") }}
{{- "\\nReasoning Mode: " + ns.mode + "\\n\\n" }}
{%- if ns.instructions %}{{- "## Custom Instructions\\n\\n" + ns.instructions + "\\n\\n" }}{%- endif %}
{{- "<|im_end|>\\n" }}
{%- set empty_think = "" if ns.mode == "/think" else "<think>\\n\\n</think>\\n" %}
{%- for message in messages %}
    {%- if message.role in ("user", "tool") %}
        {{- "<|im_start|>user\\n" + message.content + "<|im_end|>\\n" }}
    {%- elif message.role == "assistant" %}
        {{- "<|im_start|>assistant\\n" + empty_think + (message.content or "").lstrip("\\n") + "<|im_end|>\\n" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- "<|im_start|>assistant\\n" + empty_think }}{%- endif %}"""

# gpt-oss (harmony): a system turn with the date and reasoning effort, the system prompt moved to a
# developer turn with the tools as TypeScript-like signatures, channels, tool calls addressed to
# functions.NAME, <|return|> closing a finished conversation.
GPT_OSS = """{%- macro render_tools(tools) -%}
namespace functions {
{% for tool in tools %}{%- set t = tool.function if tool.function is defined else tool %}
// {{ t.description }}
type {{ t.name }} = (_: {{ t.parameters | tojson }}) => any;
{% endfor %}} // namespace functions
{%- endmacro -%}
{{- '<|start|>system<|message|>You are a large language model.\\nKnowledge cutoff: 2024-06\\nCurrent date: ' }}
{{- strftime_now('%Y-%m-%d') + '\\n\\nReasoning: ' + (reasoning_effort | default('medium')) }}
{{- '\\n\\n# Valid channels: analysis, commentary, final.' }}
{%- if tools %}{{- "\\nCalls to these tools must go to the commentary channel: 'functions'." }}{%- endif %}
{{- '<|end|>' }}
{%- set ns = namespace(developer='') %}
{%- if messages[0].role in ('system', 'developer') %}
    {%- set ns.developer = messages[0].content %}
    {%- set messages = messages[1:] %}
{%- endif %}
{%- if ns.developer or tools %}
    {{- '<|start|>developer<|message|>' }}
    {%- if ns.developer %}{{- '# Instructions\\n\\n' + ns.developer + '\\n\\n' }}{%- endif %}
    {%- if tools %}{{- '# Tools\\n\\n## functions\\n\\n' + render_tools(tools) }}{%- endif %}
    {{- '<|end|>' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'user' %}
        {{- '<|start|>user<|message|>' + message.content + '<|end|>' }}
    {%- elif message.role == 'assistant' and message.tool_calls %}
        {%- for call in message.tool_calls %}
            {%- set f = call.function if call.function is defined else call %}
            {{- '<|start|>assistant to=functions.' + f.name + '<|channel|>commentary json<|message|>' }}
            {{- (f.arguments if f.arguments is string else f.arguments | tojson) + '<|call|>' }}
        {%- endfor %}
    {%- elif message.role == 'assistant' %}
        {%- if message.reasoning_content and loop.last %}
            {{- '<|start|>assistant<|channel|>analysis<|message|>' + message.reasoning_content + '<|end|>' }}
        {%- endif %}
        {{- '<|start|>assistant<|channel|>final<|message|>' + message.content }}
        {{- '<|return|>' if loop.last and not add_generation_prompt else '<|end|>' }}
    {%- elif message.role == 'tool' %}
        {{- '<|start|>functions.' + (message.name | default('tool')) + ' to=assistant<|channel|>commentary<|message|>' }}
        {{- (message.content | tojson) + '<|end|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start|>assistant' }}{%- endif %}"""

# Every filter, test and construct the sandbox wraps, so that wrapping changes none of their results.
KITCHEN_SINK = """{%- macro turn(role, text, sep='\\n') -%}<{{ role|upper }}>{{ sep }}{{ text }}{{ caller() if caller else '' }}{%- endmacro -%}
{%- set ns = namespace(n=0, names=[], seen={}) -%}
{%- for m in messages -%}{%- set ns.n = ns.n + 1 -%}{%- set ns.names = ns.names + [m.role] -%}{%- endfor -%}
{{ ns.n }} {{ ns.names|join(',') }} {{ ns.names|unique|list|sort|join('/') }} {{ messages|length }}
{{ messages|selectattr('role', 'equalto', 'user')|list|length }} {{ messages|map(attribute='role')|join(' ') }}
{{ messages|rejectattr('role', 'eq', 'user')|map(attribute='role')|list }} {{ (messages|first).role }} {{ (messages|last).role }}
{{ messages|groupby('role')|map(attribute='grouper')|list }} {{ messages|map(attribute='content')|select('string')|list|length }}
{{ ({'b': 2, 'a': 1}|dictsort) }} {{ ({'b': 2, 'a': 1}|items|list) }} {{ dict(x=1, y=[1, 2]) }} {{ dict.fromkeys(['p', 'q'], 0) }}
{{ [3, 1, 2]|sort(reverse=true) }} {{ [1, 2, 3]|sum }} {{ [[1], [2, 3]]|sum(start=[]) }} {{ [1, 2, 3]|max }} {{ [4, 5]|min }}
{{ range(10)|batch(3, 'x')|list }} {{ range(7)|slice(3, 0)|list }} {{ [1, 2, 3]|reverse|list }} {{ 'abc'|reverse }}
{{ 'hello world'|title }} {{ 'Hello'|lower }} {{ '  pad  '|trim }} {{ 'x'|center(9) }}|{{ 'ab'|center(1) }}
{{ 'a\\nb\\nc'|indent(2, true) }} {{ 'a\\nb'|indent('> ') }} {{ 'one two three four five six'|wordwrap(9) }}
{{ 'the quick brown fox'|truncate(9, leeway=0) }} {{ 'x y z'|wordcount }} {{ 'a&b<c>'|escape }} {{ '<b>x</b> y'|striptags }}
{{ 'a-b-c'|replace('-', '+') }} {{ 'aaa'|replace('a', 'bb', 2) }} {{ '%s=%05.1f %r'|format('pi', 3.14159, 'q') }}
{{ '%(a)s and %(b)d' % {'a': 'A', 'b': 2} }} {{ '%-6s|%6s|%c' % ('l', 'r', 65) }} {{ '{} {:>6} {:.2f} {k!r}'.format('a', 'b', 1.5, k='z') }}
{{ '{0[role]}'.format(messages[0]) }} {{ '{a}-{b}'.format_map({'a': 1, 'b': 2}) }} {{ 'x' ~ 1 ~ none ~ [1] }}
{{ 1 + 2 * 3 ** 2 // 4 % 5 - 6 / 4 }} {{ 2 ** 100 }} {{ 'ab' * 3 }} {{ [0] * 3 + [1] }} {{ (1, 2) + (3,) }} {{ -7 // 2 }}
{{ 12345678|filesizeformat }} {{ 3.7|int }} {{ '42'|int + 1 }} {{ '2.5'|float }} {{ -3|abs }} {{ 2.675|round(2) }} {{ 7|string }}
{{ {'k': [1, {'z': none}], 'u': 'ü'}|tojson }} {{ {'b': 1, 'a': [1, 2]}|tojson(indent=2, sort_keys=true) }} {{ [1, 'a']|tojson(separators=(',', ':')) }}
{{ {'a': [1, 2]}|pprint }} {{ {'id': 'x', 'cls': 'y z'}|xmlattr }} {{ 'a b&c'|urlencode }} {{ 'see http://a.com or x@y.org'|urlize }}
{{ 'x' is string }} {{ 3 is odd }} {{ 4 is divisibleby 2 }} {{ none is none }} {{ [] is sequence }} {{ {} is mapping }} {{ nope is undefined }}
{{ 'upper' is filter }} {{ 'odd' is test }} {{ 1 is in [1, 2] }} {{ 'A' is upper }} {{ turn is callable }} {{ 3 is gt 2 }} {{ messages is iterable }}
{%- set sep = joiner(', ') %} {% for x in range(3) %}{{ sep() }}{{ x }}{% endfor %}
{%- set c = cycler('odd', 'even') %} {% for x in range(3) %}{{ c.next() }}{% endfor %} {{ c.current }}
{% for m in messages %}{{ loop.index }}/{{ loop.length }}{{ loop.cycle('a', 'b') }}{{ '!' if loop.changed(m.role) }}{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %} {% endfor %}
{% for x in range(10) %}{% if x is even %}{% continue %}{% endif %}{% if x > 6 %}{% break %}{% endif %}{{ x }}{% endfor %}
{% for item in [1, [2, [3]], 4] recursive %}[{% if item is sequence %}{{ loop(item) }}{% else %}{{ item }}{{ loop.depth }}{% endif %}]{% endfor %}
{% call turn('user', messages[0].content) %}+called{% endcall %}
{% set block %}inner {{ 1 + 1 }}{% endset %}{{ block|upper }} {% filter upper %}filtered {{ 'x' }}{% endfilter %}
{% generation %}generated {{ messages[-1].role }}{% endgeneration %} {{ strftime_now('%Y') }} {{ tools|length if tools else 0 }}
{{ bos_token }}{{ messages[0].content[:5] }}{{ messages[0].content[::-1][:3] }} {{ 'a,b'.split(',') }} {{ ' x '.strip() }} {{ 'ab'.startswith('a') }}
{{ 'x'.ljust(4) }}|{{ 'x'.rjust(4) }}|{{ '7'.zfill(3) }}|{{ 'a\\tb'.expandtabs(4) }}|{{ '-'.join(['a', 'b']) }}|{{ 'abc'.translate({98: 'B'}) }}
{{ (65).to_bytes(2, 'big') }} {{ 'é'.encode('utf-8') }} {{ lipsum(1, false, 3, 4)|wordcount }} {{ messages[0].get('content')|length }}
{{ messages[0]['role'] }}{{ messages[0].role }} {{ messages[0]|dictsort|first }} {{ (messages[0].items()|list)[0] }} {{ images }}
"""

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant. "},
    {"role": "user", "content": "What's the weather in Paris? Ünïcødé ✓ 日本"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}}]},
    {"role": "tool", "content": "22 degrees", "name": "get_weather"},
    {"role": "assistant", "content": "It is 22 °C in Paris.", "reasoning_content": "The tool said 22."},
    {"role": "user", "content": "  And tomorrow?  "},
]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                   "required": ["city"]}}}]
ALTERNATING = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi <b>there</b>"},
    {"role": "assistant", "content": "<think>hmm</think>\n\nHello!", "reasoning_content": "greet"},
    {"role": "user", "content": "Bye"},
]


def test_smollm2_template_renders_as_transformers_does(reference, smollm2_template):
    for messages in (CONVERSATION[1:2], [m for m in CONVERSATION if m["content"]], ALTERNATING):
        for prompt in (True, False):
            ours, theirs = render_both(reference, smollm2_template, messages, prompt)
            assert ours == theirs
    assert aios.apply_chat_template(smollm2_template, [{"role": "user", "content": "Hi"}]).endswith(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("name, template, messages, kwargs", [
    ("llama3", LLAMA3, CONVERSATION, {"date_string": "01 Jan 2025"}),
    ("llama3-tools", LLAMA3, CONVERSATION[:2] + CONVERSATION[2:4], {"tools": TOOLS, "date_string": "01 Jan 2025"}),
    ("llama3-strftime_now", LLAMA3, ALTERNATING, {}),
    ("qwen2", QWEN2, CONVERSATION, {}),
    ("qwen2-tools", QWEN2, CONVERSATION, {"tools": TOOLS}),
    ("mistral", MISTRAL, ALTERNATING, {}),
    ("deepseek", DEEPSEEK, ALTERNATING + [{"role": "assistant", "content": "x</think>\ny",
                                           "reasoning_content": " r "}], {}),
    ("gemma", GEMMA, ALTERNATING[1:], {}),
    ("qwen3", QWEN3, CONVERSATION + [{"role": "assistant", "content": "<think>\nsunny</think>\n\nSunny."}], {}),
    ("qwen3-tools-no-thinking", QWEN3, CONVERSATION, {"tools": TOOLS, "enable_thinking": False}),
    ("phi3", PHI3, ALTERNATING, {}),
    ("olmo2", OLMO2, ALTERNATING + [{"role": "assistant", "content": "Bye."}], {}),
    ("smollm3-strftime_now", SMOLLM3, ALTERNATING, {}),
    ("smollm3-no-think-strftime_now", SMOLLM3, [{"role": "system", "content": "Be brief. /no_think"}] + ALTERNATING[1:],
     {}),
    ("gpt-oss-strftime_now", GPT_OSS, CONVERSATION, {"tools": TOOLS, "reasoning_effort": "high"}),
    ("gpt-oss-plain-strftime_now", GPT_OSS, ALTERNATING, {}),
    ("kitchen-sink", KITCHEN_SINK, CONVERSATION, {"tools": TOOLS}),
])
def test_real_templates_render_as_transformers_does(reference, name, template, messages, kwargs):
    for prompt in (True, False):
        ours, theirs = render_both(reference, template, messages, prompt, **kwargs)
        if ours != theirs and "strftime_now" in name:  # the day may have turned between the two renders
            ours, theirs = render_both(reference, template, messages, prompt, **kwargs)
        assert ours == theirs, name
        assert len(ours) > 50


def test_template_errors_and_inputs_as_transformers_sees_them(reference):
    # raise_exception: transformers raises jinja's TemplateError, we the one error class, both with the text.
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        aios.apply_chat_template(MISTRAL, ALTERNATING[1:2] * 2)
    with pytest.raises(jinja2.TemplateError, match="roles must alternate"):
        reference.apply_chat_template(ALTERNATING[1:2] * 2, chat_template=MISTRAL, tokenize=False)
    # Rich objects in messages become placeholders, keys set to None vanish, reasoning is under every name.
    import numpy
    import torch

    template = "{% for m in messages %}{{ m|dictsort }}{{ m.content }}{% endfor %}"
    messages = [{"role": "user", "content": [{"type": "image", "image": torch.zeros(2)},
                                             {"type": "audio", "audio": numpy.zeros(2)}, numpy.float32(1.5)],
                 "name": None, "thinking": "t"}]
    ours, theirs = render_both(reference, template, messages)
    assert ours == theirs and "<Tensor>" in ours and "<ndarray>" in ours and "name" not in ours
    assert "'reasoning_content', 't'" in ours
    with pytest.raises(ChatTemplateError, match="SyntaxError"):
        aios.apply_chat_template("{% if %}", [])
    # A filter block whose filter returns no string (found by the fuzzer): jinja's join refuses it, so do we.
    for template in ("{% filter unique %}ab{% endfilter %}",
                     "{% macro m() %}{% filter unique %}ab{% endfilter %}{% endmacro %}{{ m() }}"):
        with pytest.raises(ChatTemplateError, match="expected str instance, generator found"):
            aios.apply_chat_template(template, [])
        with pytest.raises(TypeError, match="expected str instance, generator found"):
            reference.apply_chat_template([{"role": "user", "content": "x"}], chat_template=template, tokenize=False)
    with pytest.raises(aios.InvalidArgumentError, match="must be a dict"):
        aios.apply_chat_template("x", ["not a dict"])
    with pytest.raises(aios.InvalidArgumentError, match="tools must be dicts"):
        aios.apply_chat_template("x", [], tools=[print])
    assert issubclass(ChatTemplateError, aios.InvalidArgumentError) and ChatTemplateError.field == "chat_template"


# -- no way out of the sandbox ---------------------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",  # jinja would render '' here; we refuse the attribute itself
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id') }}",
    "{{ lipsum.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ self._TemplateReference__context.parent }}",
    "{{ self.__dict__ }}",
    "{{ range.__globals__ }}",
    "{{ raise_exception.__globals__ }}",
    "{{ strftime_now.__closure__ }}",
    "{{ dict.__call__.__globals__ }}",
    "{{ cycler.mro() }}",
    "{{ messages.__class__ }}",
    "{{ messages[0].items.__self__ }}",
    "{% for m in messages %}{{ loop.__class__ }}{% endfor %}",
    "{{ (messages|map('string')).gi_frame }}",
    "{{ (messages|map('string')).gi_code }}",
    "{{ '{0.__class__}'.format(1) }}",
    "{{ '{0.__class__.__base__.__subclasses__}'.format(messages) }}",
    "{{ '{0[__class__]}'.format({}) }}",
    "{{ '{a.__init__.__globals__}'.format_map({'a': cycler}) }}",
    "{{ ('{0.__class__}'|safe).format(1) }}",
    "{% set ns = namespace(__class__=1) %}",
    "{% set ns = namespace(_x=1) %}",
    "{% set ns = namespace() %}{% set ns._x = 1 %}",
    "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",
    "{% set ns = namespace(a=1) %}{{ ns._Namespace__attrs }}",
    "{{ namespace(a=1).__class__ }}",
    "{{ messages|attr('__class__') }}",
    "{{ messages.append(1) }}",
    "{{ messages[0].update({'role': 'x'}) }}",
    "{{ messages[0].pop('role') }}",
    "{{ messages.clear() }}",
    "{% macro m() %}{% endmacro %}{{ m._func }}",
    "{% macro m() %}{{ caller.__class__ }}{% endmacro %}{% call m() %}{% endcall %}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_attribute_escapes_are_refused(template):
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(ChatTemplateError) as e:
        aios.apply_chat_template(template, messages)
    assert isinstance(e.value.__cause__, jinja2.exceptions.SecurityError), e.value
    assert "unsafe" in str(e.value) or "underscore" in str(e.value)
    assert messages == [{"role": "user", "content": "hi"}]


FORBIDDEN_NAMES = ["open", "os", "sys", "__import__", "__builtins__", "builtins", "eval", "exec", "compile",
                   "getattr", "globals", "locals", "vars", "input", "file", "subprocess", "importlib", "import",
                   "config", "request", "environment", "context"]

FILE_AND_PROCESS = [
    "{{ open('/etc/passwd').read() }}",
    "{{ __import__('os').system('touch /tmp/aios-sandbox-pwned') }}",
    "{{ __builtins__.open('/etc/passwd') }}",
    "{{ os.popen('id').read() }}",
    "{{ environment.loader }}",
    "{% include '/etc/passwd' %}",
    "{% include ['/etc/passwd', 'x'] %}",
    "{% import 'os' as os %}{{ os.system('id') }}",
    "{% from 'os' import system %}{{ system('id') }}",
    "{% extends '/etc/passwd' %}",
    "{{ lipsum.__globals__.os.popen('id') }}",
]


def test_no_file_or_process_access():
    # The names are not defined: the template sees its variables and Jinja's globals only.
    rendered = aios.apply_chat_template(
        " ".join(f"{{{{ {name} is defined }}}}" for name in FORBIDDEN_NAMES), [])
    assert rendered == " ".join(["False"] * len(FORBIDDEN_NAMES))
    # And trying them is refused, with no file opened and no process started (Python's audit hooks see every
    # open, exec, spawn and socket; the hook stays installed for the session, so it only records while armed).
    events, armed = [], threading.Event()

    def hook(event, args):
        if armed.is_set() and threading.current_thread() is threading.main_thread():
            events.append(event)

    def attempt():
        for template in FILE_AND_PROCESS:
            with pytest.raises(ChatTemplateError):
                aios.apply_chat_template(template, [{"role": "user", "content": "hi"}])

    attempt()  # once unwatched: Jinja imports some of its own modules on first use
    sys.addaudithook(hook)
    armed.set()
    try:
        attempt()
        # A template never seen before is compiled (not taken from the cache): the hook sees that.
        assert aios.apply_chat_template(f"{{# {time.time_ns()} #}}{{{{ 1 }}}}", []) == "1"
    finally:
        armed.clear()
    touched = [e for e in events if e == "open" or e.split(".")[0] in ("os", "subprocess", "socket", "shutil",
                                                                        "ctypes", "pty", "webbrowser")]
    assert not touched, touched
    assert "compile" in events  # the hook did see the renders (jinja compiles a template to Python)
    assert not Path("/tmp/aios-sandbox-pwned").exists()


# -- bounded time, output and memory ---------------------------------------------------------------------------

BIG = "{% set big = 'x' * 1000000 %}"
NEST = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
ATTACKS = {
    # huge values in one operation, refused before Python allocates them
    "repeat": ("{{ 'a' * 10**9 }}", "repeated sequence"),
    "repeat-list": ("{{ [1] * 10**9 }}", "repeated sequence"),
    "repeat-shared": (BIG + "{{ [big] * 100 }}", "repeated sequence"),
    "center": ("{{ 'x'|center(10**9) }}", "padded"),
    "center-constant": ("{{ 'x'|center(1000000000) }}", "padded"),
    "ljust": ("{{ 'x'.ljust(10**9) }}", "padded"),
    "zfill": ("{{ '1'.zfill(10**9) }}", "padded"),
    "to_bytes": ("{{ (1).to_bytes(10**9, 'big') }}", "padded"),
    "expandtabs": ("{{ '\\t'.expandtabs(10**9) }}", "tab"),
    "expandtabs-many": ("{{ ('\\t' * 1000000).expandtabs(100) }}", "expandtabs"),
    "format-width": ('{{ "{:>999999999}".format(1) }}', "format width"),
    "format-nested-width": ('{{ "{:{}}".format(1, 999999999) }}', "format width"),
    "format-precision": ('{{ "{:.999999999f}".format(1.5) }}', "format width"),
    "format-fields": (BIG + "{{ ('{0}' * 100).format(big) }}", "formatted string"),
    "percent-width": ("{{ '%999999999d' % 1 }}", "% format"),
    "percent-star": ("{{ '%*d' % (999999999, 1) }}", "% format"),
    "percent-key": ("{{ '%(a(b))999999999s' % {'a(b)': 1} }}", "% format"),
    "percent-repeat": (BIG + "{{ ('%(a)s' * 100) % {'a': big} }}", "% format"),
    "format-filter": ("{{ '%999999999s'|format('x') }}", "% format"),
    "indent": ("{{ 'x'|indent(10**9) }}", "indent"),
    "indent-lines": ("{{ ('\\n' * 500000)|indent(100) }}", "indent"),
    "wordwrap": ("{{ ('a ' * 100000)|wordwrap(1, wrapstring='x' * 1000) }}", "wordwrap"),
    "replace": (BIG + "{{ big.replace('x', 'yyyyyyyyyyyyyyyyyyyy') }}", "replace"),
    "replace-empty": ("{{ ('x' * 100000).replace('', 'y' * 1000) }}", "replace"),
    "join": ("{{ ('x' * 100000)|join('y' * 1000) }}", "join"),
    "join-method": ("{{ ('y' * 1000).join('x' * 100000) }}", "join"),
    "translate": ("{{ ('x' * 1000).translate({120: 'y' * 100000}) }}", "translate"),
    "batch-fill": (BIG + "{{ range(3)|batch(1000, big)|list }}", "linecount"),
    "slice-fill": (BIG + "{{ range(3)|slice(1000, big)|list }}", "slices"),
    "sum-lists": ("{{ range(5000)|batch(1)|list|sum(start=[]) }}", "sum"),
    "tojson-indent": ("{{ [[[[1]]]]|tojson(indent=10**9) }}", "indent"),
    "tojson-nested": ("{% set ns = namespace(l=1) %}{% for i in range(90) %}{% set ns.l = [ns.l] %}{% endfor %}"
                      "{{ ns.l|tojson(indent=100000) }}", "tojson"),
    "deep-values": ("{% set ns = namespace(l=1) %}{% for i in range(100000) %}{% set ns.l = [ns.l] %}{% endfor %}"
                    "{{ ns.l }}", "nested more than 100"),
    "lipsum": ("{{ lipsum(10**6) }}", "lipsum"),
    "power": ("{{ 2 ** (10**9) }}", "bits"),
    "square": ("{% set ns = namespace(x=3) %}{% for i in range(100) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
               "bits"),
    # growth in loops: each step is small, the value is held to the bound
    "replace-loop": ("{% set ns = namespace(s='a') %}{% for i in range(100) %}"
                     "{% set ns.s = ns.s.replace('a', 'aa') %}{% endfor %}", "max_output_chars"),
    "concat-loop": ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                    "concatenation"),
    "plus-loop": ("{% set ns = namespace(s=[1]) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
                  "concatenation"),
    "shared-lists": ("{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = [ns.l, ns.l] %}"
                     "{% endfor %}{{ ns.l }}", "max_output_chars"),
    "shared-dicts": ("{% set ns = namespace(d={}) %}{% for i in range(64) %}{% set ns.d = {'a': ns.d, 'b': ns.d} %}"
                     "{% endfor %}{{ ns.d|tojson }}", "max_output_chars"),
    "namespace-chain": ("{% set ns = namespace(chain=[]) %}{% for i in range(40) %}"
                        "{% set ns.chain = ns.chain + [namespace(x=0)] %}{% endfor %}{% for i in range(39) %}"
                        "{% set n = ns.chain[i] %}{% set n.x = [ns.chain[i + 1], ns.chain[i + 1]] %}{% endfor %}"
                        "{{ ns.chain[0] }}", "max_output_chars"),
    "fromkeys": (BIG + "{{ dict.fromkeys(range(100000), big) }}", "max_output_chars"),
    "kept-alive": ("{% set ns = namespace(l=[]) %}{% for i in range(1000) %}"
                   "{% set ns.l = ns.l + ['x'|center(1000000)] %}{% endfor %}", "max_output_chars"),
    "map-generator": ("{{ range(100000)|map('string')|map('center', 1000000)|list|length }}", "in all"),
    "strftime": ("{{ strftime_now('%c' * 100000) }}", "max_output_chars"),
    # output
    "output": ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "output"),
    "output-constant": ("{% for i in range(100000) %}" + "x" * 1000 + "{% endfor %}", "output"),
    "macro-buffer": (BIG + "{% macro m() %}{% for i in range(1000) %}{{ big }}{% endfor %}{% endmacro %}{{ m() }}",
                     "block's output"),
    "set-block": (BIG + "{% set x %}{% for i in range(1000) %}{{ big }}{% endfor %}{% endset %}",
                  "block's output"),
    "filter-block": (BIG + "{% filter upper %}{% for i in range(1000) %}{{ big }}{% endfor %}{% endfilter %}",
                     "block's output"),
    # time: loops that call nothing, exponential recursion, a filter's own quadratic loop
    "nested-loops": (NEST, "longer than"),
    "nested-loops-in-macro": ("{% macro m() %}" + NEST + "{% endmacro %}{{ m() }}", "longer than"),
    "exponential-macro": ("{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
                          "{{ f(60) }}", "longer than"),
    "striptags": ("{{ ('<>' * 500000)|striptags }}", "longer than"),
    "calls-in-loops": (NEST.replace("{% endfor %}", "{% set x = j|string %}{% endfor %}", 1), "longer than"),
    "recursion": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
    "recursive-loop": ("{% for x in [1, 2] recursive %}{{ loop([1, 2]) }}{% endfor %}", "RecursionError"),
    # compile time
    "deep-nesting": ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "Error"),
    "huge-template": ("{{ 1 }}" * 100000, "more than"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_resource_attacks_are_refused_in_time_and_memory(name):
    template, message = ATTACKS[name]
    timeout = aios.text.TIMEOUT_S
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = time.monotonic()
        with pytest.raises(ChatTemplateError) as e:
            aios.apply_chat_template(template, [{"role": "user", "content": "hi"}], timeout_s=timeout)
        elapsed = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message in str(e.value), str(e.value)
    assert elapsed < timeout + MARGIN_S, (elapsed, str(e.value))
    assert peak < MEMORY_BOUND, (peak >> 20, str(e.value))


def test_the_default_bounds_hold_and_can_be_set():
    start = time.monotonic()
    with pytest.raises(ChatTemplateError, match="longer than timeout_s=2"):
        aios.apply_chat_template(NEST, [])
    assert 1.9 < time.monotonic() - start < 2 + MARGIN_S
    # Just under the output bound renders; one more character does not.
    assert len(aios.apply_chat_template("{{ 'x' * 1048576 }}", [])) == aios.text.MAX_OUTPUT_CHARS
    with pytest.raises(ChatTemplateError, match="max_output_chars=1048576"):
        aios.apply_chat_template("{{ 'x' * 1048576 }}y", [])
    assert aios.apply_chat_template("{{ 'ab' * 5 }}", [], max_output_chars=10) == "ab" * 5
    with pytest.raises(ChatTemplateError, match="max_output_chars=10"):
        aios.apply_chat_template("{{ 'ab' * 5 }}!", [], max_output_chars=10)
    with pytest.raises(ChatTemplateError, match="max_output_chars=10"):
        aios.apply_chat_template("{% set x = 'a' * 11 %}", [], max_output_chars=10)
    with pytest.raises(ChatTemplateError, match="timeout_s=0.3"):
        aios.apply_chat_template(NEST, [], timeout_s=0.3)
    for bad in ({"max_output_chars": 0}, {"timeout_s": 0}, {"timeout_s": float("inf")}):
        with pytest.raises(aios.InvalidArgumentError):
            aios.apply_chat_template("x", [], **bad)


def test_the_tracer_in_place_before_is_put_back():
    calls = []

    def tracer(frame, event, arg):
        calls.append(event)
        return None

    sys.settrace(tracer)
    try:
        aios.apply_chat_template("{{ 1 }}", [])
        with pytest.raises(ChatTemplateError):
            aios.apply_chat_template(NEST, [], timeout_s=0.2)
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)


def test_renders_in_threads_keep_their_own_bounds(smollm2_template):
    # One thread spends its time budget while others render normally: the bounds are per render.
    results, errors = [], []

    def normal():
        results.append(aios.apply_chat_template(smollm2_template, CONVERSATION[1:2]))

    def hostile():
        try:
            aios.apply_chat_template(NEST, [], timeout_s=0.5)
        except ChatTemplateError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=hostile)] + [threading.Thread(target=normal) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4 and len(set(results)) == 1 and "Paris" in results[0]
    assert len(errors) == 1 and "longer than" in errors[0]


def test_the_fuzzer_corpus_replays_clean():
    spec = importlib.util.spec_from_file_location("fuzz_chat_template", FUZZ / "fuzz_chat_template.py")
    fuzzer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzzer)
    corpus = FUZZ / "corpus" / "fuzz_chat_template_py"
    assert fuzzer.replay([corpus]) >= 10
    # The checks themselves can fail: a render that overran its deadline is a finding.
    with pytest.raises(fuzzer.Finding, match="took"):
        original, fuzzer.MARGIN = fuzzer.MARGIN, -1.0
        try:
            fuzzer.check(b"\x01" + "{{ 1 }}".encode())
        finally:
            fuzzer.MARGIN = original
