"""The simulator's HTTP-free core: from a Messages API request to a `Plan`.

Deterministic: the same request always yields the same text in the same deltas. The
text is derived from a hash of (model, system, messages) with directives removed, so
a prompt with fault directives yields exactly the text of the same prompt without
them. A final assistant turn that is a prefix of that text is a prefill: the answer
is exactly the rest.

An answer is made of blocks, streamed in this order: thinking (when the request
enables it, or `[[sim:thinking=N]]` asks), text, and a tool_use block for
`[[sim:tool=NAME]]`, unless the last user turn hands back tool results: then the
answer is text. Like Claude, a thinking block ends with a signature, which the
simulator checks when a later request sends the block back.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import random
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from tokenrelay.errors import error_type_for
from tokenrelay.pricing import ModelTable

DIRECTIVE = re.compile(r"\[\[sim:([a-z_]+)=([^\]]*)\]\]")
INT_DIRECTIVES = frozenset(
    {"tokens", "ttft_ms", "status", "error_after", "drop_after", "stall_after", "fail_times"}
    | {"echo", "thinking"}
)
DEFAULT_TOKENS = 50
DEFAULT_THINKING_DELTAS = 8  # each of a few words, as Claude's thinking deltas are
THINKING_TYPES = frozenset({"enabled", "adaptive", "between_tools"})
MIN_THINKING_BUDGET = 1024
PREFILL_REJECTED = (
    "This model does not support assistant message prefill. "
    "The conversation must end with a user message."
)

WORDS = (
    "river stone light morning quiet harbor garden signal winter bridge lantern paper "
    "forest window silver engine market orchard thunder meadow candle compass valley "
    "ribbon ocean pebble village mirror feather canyon shadow copper island breeze "
    "anchor planet violet summer castle cedar marble falcon glacier horizon ivory jasmine "
    "kettle ladder maple nectar opal prairie quartz raven saddle tundra umbrella velvet "
    "willow yarrow zephyr amber basket cloud desert ember fjord grove hollow inlet "
    "journey kernel lagoon mosaic north orbit pattern quill ridge summit tide upland "
    "vessel wander apple bright calm deep early fair gentle happy idle kind lively "
    "mellow noble open proud rapid steady tender vivid warm young brave clear quick "
    "slow soft bold and the a of to in with over under near across beyond through "
    "carries holds finds keeps makes brings shows leaves follows turns meets builds "
    "draws hears sees knows grows moves rests waits sings"
).split()


class SimError(Exception):
    """What Claude would answer with an HTTP error instead of a stream; the error type
    follows from the status, as Claude's does."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type_for(status)
        self.message = message
        self.retry_after = retry_after


class Fault(enum.Enum):
    """How an answer breaks; each runner turns it into its own effect."""

    ERROR = "error"  # an `overloaded_error` event, then the stream ends
    DROP = "drop"  # the connection is cut
    STALL = "stall"  # silence: no event, not even a ping


@dataclass(frozen=True, slots=True)
class ToolBlock:
    id: str
    name: str
    input: dict[str, Any]

    def json_fragments(self) -> list[str]:
        """The input JSON cut in pieces of 3 to 10 characters, as Claude streams it: a
        piece ends anywhere, inside a key or a string as often as not."""
        text = json.dumps(self.input)
        rng = random.Random(self.id)
        fragments: list[str] = []
        at = 0
        while at < len(text):
            step = rng.randint(3, 10)
            fragments.append(text[at : at + step])
            at += step
        return fragments


def signature_of(thinking: str) -> str:
    """The signature of a thinking block's text: opaque base64, as Claude's is."""
    digest = hashlib.sha256(b"tokenrelay-sim-thinking\x00" + thinking.encode()).digest()
    return base64.b64encode(b"\x12" + digest + hashlib.sha256(digest).digest()).decode()


@dataclass(slots=True)
class Plan:
    """One answer: what to send, how fast, and where it breaks."""

    model: str
    message_id: str
    deltas: list[str]
    stop_reason: str
    input_tokens: int
    ttft_s: float
    tps: float
    tool: ToolBlock | None = None
    thinking: list[str] | None = None  # the thinking block's deltas, when there is one
    error_after: int | None = None  # send an overloaded_error event after N deltas
    drop_after: int | None = None  # cut the connection after N deltas
    stall_after: int | None = None  # fall silent (no event, no ping) after N deltas
    stop_sequence: str | None = None  # the request's stop sequence the text ended at

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    @property
    def thinking_text(self) -> str:
        return "".join(self.thinking or ())

    @property
    def signature(self) -> str:
        return signature_of(self.thinking_text)

    @property
    def output_tokens(self) -> int:
        """One per delta: thinking, text and tool input alike."""
        fragments = len(self.tool.json_fragments()) if self.tool else 0
        return len(self.thinking or ()) + len(self.deltas) + fragments

    def fault_at(self, sent: int) -> Fault | None:
        """The fault due once `sent` deltas have gone out, before the next one or, after
        the last, before the answer's end. Deltas count thinking, text and tool input
        fragments alike, in the order they stream, so a cut can land inside a thinking
        or tool_use block. Runners ask before every delta and once at the end, and each
        turns the answer into its own effect."""
        if self.error_after == sent:
            return Fault.ERROR
        if self.drop_after == sent:
            return Fault.DROP
        if self.stall_after == sent:
            return Fault.STALL
        return None

    def delay_before(self, index: int) -> float:
        """Seconds from the stream's start until delta `index` is due."""
        if self.tps <= 0:
            return self.ttft_s if index == 0 else 0.0
        return self.ttft_s + index / self.tps


def whole_message(plan: Plan) -> dict[str, Any]:
    """The answer as one Message, as a request that does not stream gets it."""
    content: list[dict[str, Any]] = []
    if plan.deltas or plan.tool is None:
        content.append({"type": "text", "text": plan.text})
    if plan.thinking is not None:
        thinking = {"type": "thinking", "thinking": plan.thinking_text}
        content.insert(0, {**thinking, "signature": plan.signature})
    if plan.tool:
        tool = plan.tool
        content.append({"type": "tool_use", "id": tool.id, "name": tool.name, "input": tool.input})
    return {
        "id": plan.message_id, "type": "message", "role": "assistant", "model": plan.model,
        "content": content, "stop_reason": plan.stop_reason,
        "stop_sequence": plan.stop_sequence,
        "usage": {"input_tokens": plan.input_tokens, "output_tokens": plan.output_tokens},
    }  # fmt: skip


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _turn_text(content: Any) -> str:
    """What a turn says, for deriving the answer: its text, and its tool calls and
    results, so that another result gets another answer."""
    parts = [_text_of(content)]
    for block in _blocks(content):
        if block.get("type") == "tool_use":
            parts.append(f"[{block.get('name')} {orjson.dumps(block.get('input')).decode()}]")
        elif block.get("type") == "tool_result":
            result = block.get("content")
            parts.append(f"[result {_text_of(result) if isinstance(result, list) else result}]")
    return " ".join(p for p in parts if p)


def _hands_back_results(messages: list[dict[str, Any]]) -> bool:
    last = messages[-1] if messages else None
    return last is not None and any(
        b.get("type") == "tool_result" for b in _blocks(last.get("content"))
    )


def _thinking_deltas(body: dict[str, Any], directives: dict[str, Any], max_tokens: int) -> int:
    """How many thinking deltas the answer opens with (0: no thinking block); raises
    SimError for a thinking config Claude would refuse."""
    config = body.get("thinking")
    if config is None or (isinstance(config, dict) and config.get("type") == "disabled"):
        return int(directives.get("thinking", 0))
    if not isinstance(config, dict) or config.get("type") not in THINKING_TYPES:
        raise SimError(400, "thinking: Input tag does not match any of the expected tags")
    if config["type"] == "enabled":
        budget = config.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise SimError(400, "thinking.enabled.budget_tokens: Field required")
        if budget < MIN_THINKING_BUDGET:
            raise SimError(
                400, f"thinking.enabled.budget_tokens: Input should be >= {MIN_THINKING_BUDGET}"
            )
        if budget >= max_tokens:
            raise SimError(400, "`max_tokens` must be greater than `thinking.budget_tokens`")
    return int(directives.get("thinking", DEFAULT_THINKING_DELTAS))


def _tool_asked(
    body: dict[str, Any], directives: dict[str, Any], thinking: int
) -> tuple[str | None, bool]:
    """The tool the answer calls, if any, and whether `tool_choice` forces it: `tool`
    names it, `any` takes the directive's or the first tool, `none` calls none."""
    named = directives.get("tool")
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "none":
        return None, False
    if kind not in ("tool", "any"):
        return (named or None), False
    if thinking and body.get("thinking") is not None:
        raise SimError(400, "Thinking may not be enabled when tool_choice forces tool use.")
    tools = body.get("tools") or []
    names = [t.get("name") for t in tools if isinstance(t, dict)]
    if kind == "tool":
        name = choice.get("name") if isinstance(choice, dict) else None
        if name not in names:
            raise SimError(400, f"tool_choice: tool {name!r} not found in tools")
        return name, True
    if not names:
        raise SimError(400, "tool_choice: any requires tools")
    return (named if named in names else names[0]), True


def _check_signatures(messages: list[dict[str, Any]]) -> None:
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        for j, block in enumerate(_blocks(message.get("content"))):
            if block.get("type") != "thinking":
                continue
            thinking, signature = block.get("thinking"), block.get("signature")
            if not isinstance(thinking, str) or signature != signature_of(thinking):
                raise SimError(
                    400, f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
                )


def thinking_deltas(key: bytes, count: int) -> list[str]:
    """`count` deltas of thinking, each a few words, as Claude's are."""
    words = derive_deltas(key + b"\x00thinking", count * 4)
    return ["".join(words[i : i + 4]) for i in range(0, len(words), 4)]


def _clean(text: str) -> str:
    return " ".join(DIRECTIVE.sub(" ", text).split())


def derive_deltas(key: bytes, count: int) -> list[str]:
    rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
    deltas: list[str] = []
    sentence_left = 0
    while len(deltas) < count:
        if sentence_left == 0:
            sentence_left = rng.randint(6, 14)
            word = rng.choice(WORDS).capitalize()
        else:
            word = rng.choice(WORDS)
        sentence_left -= 1
        if sentence_left == 0 or len(deltas) == count - 1:
            word += "."
            sentence_left = 0
        deltas.append(word if not deltas else " " + word)
    return deltas


def echo_deltas(text: str) -> list[str]:
    """`text` as deltas of one word each, spaces leading as in derived text."""
    words = text.split(" ")
    return [words[0], *(" " + w for w in words[1:])]


class Simulator:
    def __init__(
        self, *, ttft_ms: int = 300, tps: float = 60.0, models: ModelTable | None = None,
        served: frozenset[str] | None = None,
    ) -> None:  # fmt: skip
        self.ttft_ms = ttft_ms
        self.tps = tps
        self.models = models or ModelTable()
        # The models this deployment serves (None: every one it knows); another is as
        # unknown to it as a made-up id.
        self.served = served
        self._attempts: OrderedDict[bytes, int] = OrderedDict()

    def plan(self, body: dict[str, Any]) -> Plan:
        """The answer to a Messages API request body; raises SimError for an HTTP error."""
        model, messages, max_tokens = _required(body)
        if not self.serves(model):
            raise SimError(404, f"model: {model}")
        directives = _directives(body)
        prefill: str | None = None
        if messages and messages[-1].get("role") == "assistant":
            prefill = _text_of(messages[-1].get("content"))
            if not self.models.accepts_prefill(model):
                raise SimError(400, PREFILL_REJECTED)
            if prefill != prefill.rstrip():
                raise SimError(
                    400, "messages: final assistant content cannot end with trailing whitespace"
                )
            messages = messages[:-1]
        think = _thinking_deltas(body, directives, max_tokens)
        _check_signatures(messages)
        canonical: dict[str, Any] = {
            "model": model,
            "system": _clean(_text_of(body.get("system"))),
            "messages": [
                {"role": m.get("role"), "content": _clean(_turn_text(m.get("content")))}
                for m in messages
            ],
        }
        key = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
        attempt = self._count_attempt(key)
        faulty = "fail_times" not in directives or attempt <= directives["fail_times"]

        status = directives.get("status")
        if faulty and status:
            retry_after = 1 if status in (429, 529) else None
            raise SimError(status, f"Simulated {error_type_for(status)}", retry_after)

        count = directives.get("tokens", DEFAULT_TOKENS)
        tool_name, forced = _tool_asked(body, directives, think)
        deltas = derive_deltas(key, count)
        last = canonical["messages"][-1] if canonical["messages"] else None
        if directives.get("echo") and last and last["role"] == "user" and last["content"]:
            # A chosen answer (e.g. markup, to test that clients show it as text).
            deltas = echo_deltas(last["content"])
        tool = None
        if tool_name and (forced or not _hands_back_results(messages)):
            # A forced tool comes at once, as Claude's does: no words before it.
            deltas = [] if forced else deltas[:5]
            query = "".join(derive_deltas(key + b"tool", 4)).strip(".").lower()
            tool_id = "toolu_" + hashlib.sha256(key).hexdigest()[:24]
            tool = ToolBlock(tool_id, tool_name, {"query": query})
        deltas, stop_sequence = _cut_at_stop(deltas, body.get("stop_sequences"))
        if stop_sequence is not None:
            tool = None  # the answer ends at the sequence, before any tool call
        if prefill is not None:
            rest = _rest_after(deltas, prefill)
            deltas = rest if rest is not None else derive_deltas(key + prefill.encode(), count)
        stop_reason = "tool_use" if tool else "stop_sequence" if stop_sequence else "end_turn"
        thinking = thinking_deltas(key, think)[:max_tokens] if think else None
        room = max_tokens - len(thinking or ())
        if len(deltas) > room:
            deltas, stop_reason, tool = deltas[:room], "max_tokens", None
        return Plan(
            model=model,
            message_id="msg_" + hashlib.sha256(key + b"%d" % attempt).hexdigest()[:24],
            deltas=deltas,
            stop_reason=stop_reason,
            input_tokens=_input_tokens(messages, canonical["system"]),
            ttft_s=directives.get("ttft_ms", self.ttft_ms) / 1000,
            tps=float(directives.get("tps", self.tps)),
            tool=tool,
            thinking=thinking,
            error_after=directives.get("error_after") if faulty else None,
            drop_after=directives.get("drop_after") if faulty else None,
            stall_after=directives.get("stall_after") if faulty else None,
            stop_sequence=stop_sequence,
        )

    def count_tokens(self, body: dict[str, Any]) -> int:
        """The input tokens of a request, as `plan` reports them for it (Claude's
        count_tokens); every turn counts, a final assistant one too."""
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model:
            raise SimError(400, "model: Field required")
        if not self.serves(model):
            raise SimError(404, f"model: {model}")
        if not isinstance(messages, list) or not messages:
            raise SimError(400, "messages: Field required")
        if not all(isinstance(m, dict) for m in messages):
            raise SimError(400, "messages: invalid message")
        return _input_tokens(messages, _clean(_text_of(body.get("system"))))

    def serves(self, model: str) -> bool:
        return model in self.models and (self.served is None or model in self.served)

    def _count_attempt(self, key: bytes) -> int:
        attempt = self._attempts.pop(key, 0) + 1
        self._attempts[key] = attempt
        if len(self._attempts) > 100_000:  # bounded: forget the oldest requests
            self._attempts.popitem(last=False)
        return attempt


def input_tokens(messages: list[dict[str, Any]], system: object) -> int:
    """The input tokens of `messages` with a `system` prompt (a string, or blocks)."""
    return _input_tokens(messages, _clean(_text_of(system)))


def _input_tokens(messages: list[dict[str, Any]], system: str) -> int:
    """About four characters a token, as a prompt's text goes."""
    prompt_chars = sum(len(_text_of(m.get("content"))) for m in messages)
    return max(1, (prompt_chars + len(system)) // 4)


def _required(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]], int]:
    model, messages, max_tokens = body.get("model"), body.get("messages"), body.get("max_tokens")
    if not isinstance(model, str) or not model:
        raise SimError(400, "model: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise SimError(400, "max_tokens: Field required")
    if not isinstance(messages, list) or not messages:
        raise SimError(400, "messages: Field required")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise SimError(400, "messages: invalid message")
    return model, messages, max_tokens


def _directives(body: dict[str, Any]) -> dict[str, Any]:
    texts = [_text_of(body.get("system"))]
    texts += [_text_of(m.get("content")) for m in body["messages"] if m.get("role") == "user"]
    found: dict[str, Any] = {}
    for text in texts:
        for name, value in DIRECTIVE.findall(text):
            if name in INT_DIRECTIVES and value.isdigit():
                found[name] = int(value)
            elif name == "tps":
                try:
                    found[name] = float(value)
                except ValueError:
                    continue
            elif name == "tool":
                found[name] = value
    return found


def _cut_at_stop(deltas: list[str], stops: object) -> tuple[list[str], str | None]:
    """The deltas up to the first of the stop sequences in their text (which, as
    Claude does, is left out), and that sequence; unchanged when none occurs."""
    if not isinstance(stops, list):
        return deltas, None
    text = "".join(deltas)
    found = [(text.find(s), s) for s in stops if isinstance(s, str) and s and s in text]
    if not found:
        return deltas, None
    at, sequence = min(found)
    kept: list[str] = []
    for delta in deltas:
        if len(delta) >= at:
            if at:
                kept.append(delta[:at])
            break
        kept.append(delta)
        at -= len(delta)
    return kept, sequence


def _rest_after(deltas: list[str], prefill: str) -> list[str] | None:
    """The deltas that follow `prefill`, if it is a prefix of their text."""
    text = "".join(deltas)
    if not text.startswith(prefill):
        return None
    consumed = 0
    for i, delta in enumerate(deltas):
        if consumed + len(delta) > len(prefill):
            first = delta[len(prefill) - consumed :]
            return [first, *deltas[i + 1 :]]
        consumed += len(delta)
    return []
