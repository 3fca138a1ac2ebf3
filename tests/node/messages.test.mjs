// Claude's TypeScript SDK (@anthropic-ai/sdk from npm) under node, against a real
// gateway in front of the simulator: run by tests/test_messages_node.py, which starts
// them and passes their URLs as TOKENRELAY_GATEWAY and TOKENRELAY_SIMULATOR. Every
// answer is compared with the simulator's own, asked straight with the same SDK.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';

import Anthropic from '@anthropic-ai/sdk';

const gatewayURL = process.env.TOKENRELAY_GATEWAY;
const simulatorURL = process.env.TOKENRELAY_SIMULATOR;
assert.ok(gatewayURL && simulatorURL, 'TOKENRELAY_GATEWAY and TOKENRELAY_SIMULATOR must be set');

const MODEL = 'claude-haiku-4-5';
const gateway = new Anthropic({ baseURL: gatewayURL, apiKey: 'unused', maxRetries: 0 });
const simulator = new Anthropic({ baseURL: simulatorURL, apiKey: 'unused', maxRetries: 0 });

const unique = (prompt) => `${prompt} (${randomUUID().slice(0, 8)})`;
const ask = (prompt, more = {}) => ({
  model: MODEL,
  max_tokens: 1024,
  messages: [{ role: 'user', content: prompt }],
  ...more,
});
const textOf = (message) =>
  message.content
    .filter((b) => b.type === 'text')
    .map((b) => b.text)
    .join('');

test('messages.create returns the simulator’s message', async () => {
  const params = ask(unique('Hello from node [[sim:tokens=14]]'));
  const [got, want] = await Promise.all([
    gateway.messages.create(params),
    simulator.messages.create(params),
  ]);
  assert.match(got.id, /^msg_/);
  assert.deepEqual(got.content, want.content);
  assert.equal(got.stop_reason, 'end_turn');
  assert.equal(got.usage.input_tokens, want.usage.input_tokens);
  assert.equal(got.usage.output_tokens, 14);
});

test('messages.stream emits the text as it comes and the final message', async () => {
  const params = ask(unique('Stream to node [[sim:tokens=12]]'));
  const want = await simulator.messages.create(params);
  const stream = gateway.messages.stream(params);
  const pieces = [];
  stream.on('text', (text) => pieces.push(text));
  const message = await stream.finalMessage();
  assert.equal(pieces.length, 12);
  assert.equal(pieces.join(''), textOf(want));
  assert.deepEqual(message.content, want.content);
  assert.equal(message.usage.output_tokens, 12);
});

test('create with stream: true yields Claude’s events in order', async () => {
  const params = ask(unique('Raw events [[sim:tokens=3]]'));
  const events = [];
  for await (const event of await gateway.messages.create({ ...params, stream: true })) {
    events.push(event.type);
  }
  assert.deepEqual(events, [
    'message_start',
    'content_block_start',
    'content_block_delta',
    'content_block_delta',
    'content_block_delta',
    'content_block_stop',
    'message_delta',
    'message_stop',
  ]);
});

test('a tool call arrives as a tool_use block with its parsed input', async () => {
  const tools = [{ name: 'weather', input_schema: { type: 'object' } }];
  const params = ask(unique('Weather in Paris? [[sim:tool=weather]]'), { tools });
  const want = await simulator.messages.create(params);
  const message = await gateway.messages.stream(params).finalMessage();
  assert.deepEqual(
    message.content.map((b) => b.type),
    ['text', 'tool_use'],
  );
  assert.deepEqual(message.content, want.content);
  assert.equal(message.stop_reason, 'tool_use');
});

test('an upstream drop is healed into one message', async () => {
  const prompt = unique('Heal it for node [[sim:tokens=20]] [[sim:drop_after=7]] [[sim:fail_times=1]]');
  const message = await gateway.messages.stream(ask(prompt)).finalMessage();
  const want = await simulator.messages.create(ask(prompt)); // the fault is spent
  assert.equal(message.content.length, 1);
  assert.equal(textOf(message), textOf(want));
  assert.equal(message.usage.output_tokens, 20);
  assert.equal(message.usage.input_tokens, 2 * want.usage.input_tokens);
});

test('errors are the SDK’s own classes, with Claude’s error type', async () => {
  await assert.rejects(
    gateway.messages.create({ ...ask('Hi'), model: 'claude-nonexistent-1' }),
    (err) => err instanceof Anthropic.NotFoundError && err.status === 404 && err.type === 'not_found_error',
  );
  await assert.rejects(
    gateway.messages.create({ ...ask('Hi'), max_tokens: 0 }),
    (err) => err instanceof Anthropic.BadRequestError && err.type === 'invalid_request_error',
  );
  await assert.rejects(
    gateway.messages.create(ask(unique('Busy [[sim:status=529]]'))),
    (err) => err instanceof Anthropic.OverloadedError && err.type === 'overloaded_error',
  );
  // Once the answer has started, a failure is an error event: the stream rejects.
  const broken = ask(unique('Broken [[sim:tokens=20]] [[sim:drop_after=4]]'), {
    model: 'claude-sonnet-4-6',
  });
  const stream = gateway.messages.stream(broken);
  const pieces = [];
  stream.on('text', (text) => pieces.push(text));
  await assert.rejects(
    stream.finalMessage(),
    (err) => err instanceof Anthropic.APIError && err.type === 'overloaded_error',
  );
  assert.equal(pieces.length, 4);
});
