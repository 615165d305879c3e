"""A filter in Python: refuse requests whose User-Agent names a denied bot.

Route config: `{ deny_agents = ["BadBot", "scrapy"], status = 403 }`. A
User-Agent containing any entry (case-insensitively) gets `status` (403 by
default); every other request goes on. scripts/build-filters.sh builds it
with componentize-py into target/python/bot_block.wasm.
"""
import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import config, log, types


def settings():
    parsed = json.loads(config.get())
    agents = parsed.get("deny_agents")
    if not isinstance(agents, list) or not agents or not all(isinstance(a, str) and a for a in agents):
        raise Err("deny_agents must be a non-empty list of non-empty strings")
    status = parsed.get("status", 403)
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise Err("status must be an error status (400 to 599)")
    return [a.lower() for a in agents], status


class WitWorld(wit_world.WitWorld):
    def check_config(self) -> None:
        settings()

    def on_request(self, request: types.Request) -> types.Verdict:
        agents, status = settings()
        agent = (request.header("user-agent") or "").lower()
        if any(denied in agent for denied in agents):
            log.log(log.Level.INFO, "refused user agent " + agent)
            return types.Verdict_Respond(types.Reply(status, [("content-type", "text/plain")], b"forbidden\n"))
        return types.Verdict_Continue()

    def on_response(self, response: types.Response) -> None:
        config.skip_on_response()
