"""What the tests share, so that no test module imports another (conftest.py files
only define fixtures):

    processes   free ports, `python -m tokenrelay` processes, waiting until ready
    services    throwaway redis-server and nginx
    stack       the simulator + gateway stack most tests run against
    streams     a `tokens` dialect reader on httpx-sse (not our client)
    answers     unique prompts, and the simulator's direct answer to compare with
    assertions  Claude's error shape; one whole answer
    polling     `eventually`: wait for a condition, with a deadline that names it
    logs        the gateway's structured log, one JSON object a line
    metrics     a gateway's /metrics, scraped, and what moved between two scrapes
    auth        API keys, JWTs and a JWKS endpoint
    proxy       a TCP proxy that cuts connections
    browser     the chat page in Chromium (imported by the browser tests only)
    docs        docs/sdk.md's code blocks, run against a test's gateway
    inprocess   a gateway app served in the test's own event loop
"""

from tests.support.answers import direct_text, unique
from tests.support.assertions import assert_error, assert_whole_answer
from tests.support.logs import log_events, log_lines
from tests.support.polling import eventually, eventually_async
from tests.support.processes import ROOT, free_port, spawn, wait_for_port, wait_until_ok
from tests.support.services import Redis, nginx, redis_server
from tests.support.stack import FAST_GATEWAY_ENV, Stack, run_stack
from tests.support.streams import Event, Read, read_stream, resume, start, text_of

__all__ = [
    "FAST_GATEWAY_ENV",
    "ROOT",
    "Event",
    "Read",
    "Redis",
    "Stack",
    "assert_error",
    "assert_whole_answer",
    "direct_text",
    "eventually",
    "eventually_async",
    "free_port",
    "log_events",
    "log_lines",
    "nginx",
    "read_stream",
    "redis_server",
    "resume",
    "run_stack",
    "spawn",
    "start",
    "text_of",
    "unique",
    "wait_for_port",
    "wait_until_ok",
]
