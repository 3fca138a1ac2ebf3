"""OpenAI's chat messages as Claude's system prompt and turns (for `chat_request.py`).

    system, developer          the system prompt, joined by blank lines
    user                       a string, or text and image blocks (from image_url parts)
    assistant                  text, then one tool_use block per tool call (arguments parsed)
    tool                       a tool_result block in the next user turn, answering a call
                               of the assistant message before it

Consecutive messages of one role join into one turn, as Claude's turns alternate.
Each mistake is an `InvalidParam` naming where it is (`messages[3].tool_calls[0].id`).
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenrelay.dialects.openai_errors import InvalidParam

_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


class Messages:
    """OpenAI's messages → Claude's system and turns."""

    def __init__(self) -> None:
        self.system: list[str] = []
        self.turns: list[dict[str, Any]] = []
        self._calls: set[str] = set()  # the ids of the last assistant turn's tool calls

    def translate(self, messages: object) -> tuple[str | None, list[dict[str, Any]]]:
        if not isinstance(messages, list) or not messages:
            raise InvalidParam("messages must be a non-empty list", "messages")
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, dict):
                raise InvalidParam(f"Invalid {where}: expected an object", where)
            role = message.get("role")
            if role in ("system", "developer"):
                self.system.append(_plain_text(message.get("content"), f"{where}.content"))
            elif role == "user":
                self._add("user", _user_content(message.get("content"), f"{where}.content"))
            elif role == "assistant":
                self._add("assistant", self._assistant(message, where))
            elif role == "tool":
                self._add("user", [self._tool_result(message, where)])
            else:
                raise InvalidParam(
                    f"Invalid {where}.role: expected system, developer, user, assistant or tool",
                    f"{where}.role",
                )
        system = "\n\n".join(s for s in self.system if s) or None
        if not self.turns:
            raise InvalidParam("messages must hold at least one user message", "messages")
        return system, self.turns

    def _add(self, role: str, content: str | list[dict[str, Any]]) -> None:
        last = self.turns[-1] if self.turns else None
        if last is None or last["role"] != role:
            self.turns.append({"role": role, "content": content})
            return
        # Claude's turns alternate: a second message of the same role joins the first.
        last["content"] = _blocks(last["content"]) + _blocks(content)

    def _assistant(self, message: dict[str, Any], where: str) -> list[dict[str, Any]]:
        for name in ("audio", "function_call"):
            if message.get(name) is not None:
                raise InvalidParam(f"{where}.{name} is not supported", f"{where}.{name}")
        content = message.get("content")
        blocks = [] if content is None else _blocks(_assistant_text(content, f"{where}.content"))
        calls = message.get("tool_calls") or []
        if not isinstance(calls, list):
            raise InvalidParam(
                f"Invalid {where}.tool_calls: expected a list", f"{where}.tool_calls"
            )
        self._calls = set()
        for j, call in enumerate(calls):
            blocks.append(self._tool_use(call, f"{where}.tool_calls[{j}]"))
        if not blocks:
            raise InvalidParam(f"{where} needs content or tool_calls", f"{where}.content")
        return blocks

    def _tool_use(self, call: object, where: str) -> dict[str, Any]:
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise InvalidParam(f"Invalid {where}: only function tool calls are supported", where)
        call_id, function = call.get("id"), call.get("function")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidParam(f"Invalid {where}.id: expected a non-empty string", f"{where}.id")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidParam(
                f"Invalid {where}.function: expected a name and arguments", f"{where}.function"
            )
        arguments = function.get("arguments") or "{}"
        try:
            parsed = orjson.loads(arguments) if isinstance(arguments, str) else None
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise InvalidParam(
                f"Invalid {where}.function.arguments: expected a JSON object",
                f"{where}.function.arguments",
            )
        self._calls.add(call_id)
        return {"type": "tool_use", "id": call_id, "name": function["name"], "input": parsed}

    def _tool_result(self, message: dict[str, Any], where: str) -> dict[str, Any]:
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or call_id not in self._calls:
            raise InvalidParam(
                f"{where}.tool_call_id must name a tool call of the assistant message before it",
                f"{where}.tool_call_id",
            )
        text = _plain_text(message.get("content"), f"{where}.content")
        return {"type": "tool_result", "tool_use_id": call_id, "content": text}


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _parts(content: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
        raise InvalidParam(f"Invalid {where}: expected a string or a list of content parts", where)
    return content


def _plain_text(content: object, where: str) -> str:
    """A system, developer or tool message's content: a string, or text parts."""
    if isinstance(content, str):
        return content
    texts = []
    for k, part in enumerate(_parts(content, where)):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise InvalidParam(
                f"Invalid {where}[{k}]: only text parts are supported here", f"{where}[{k}]"
            )
        texts.append(part["text"])
    return "".join(texts)


def _assistant_text(content: object, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    blocks = []
    for k, part in enumerate(_parts(content, where)):
        kind = part.get("type")
        text = part.get("refusal" if kind == "refusal" else "text")
        if kind not in ("text", "refusal") or not isinstance(text, str):
            raise InvalidParam(
                f"Invalid {where}[{k}]: only text parts are supported here", f"{where}[{k}]"
            )
        if text:
            blocks.append({"type": "text", "text": text})
    return blocks


def _user_content(content: object, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    blocks = []
    for k, part in enumerate(_parts(content, where)):
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{where}[{k}].image_url"))
        else:
            raise InvalidParam(
                f"Invalid {where}[{k}]: only text and image_url parts are supported",
                f"{where}[{k}]",
            )
    if not blocks:
        raise InvalidParam(f"Invalid {where}: a user message must not be empty", where)
    return blocks


def _image(image: object, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else None
    if isinstance(url, str) and url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if sep and encoding == "base64" and media_type in _MEDIA_TYPES and data:
            source = {"type": "base64", "media_type": media_type, "data": data}
            return {"type": "image", "source": source}
    elif isinstance(url, str) and url.startswith("https://"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidParam(
        f"Invalid {where}.url: expected an https URL or a base64 data URL of a JPEG, PNG, "
        "GIF or WebP image",
        f"{where}.url",
    )
