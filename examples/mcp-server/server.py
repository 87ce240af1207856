"""An MCP server with two tools that need different scopes, meant to run behind keyplane.

keyplane's gateway (or forward auth) checks the caller's access token before a request gets
here and passes on the scopes it holds in `X-Keyplane-Scopes`; this server trusts that header
only because it listens on 127.0.0.1, where only the gateway reaches it. `read_notes` needs
`mcp:read` (the gateway's route rule already demands it for every call); `add_note` needs
`mcp:write`, which this server checks per tool: without it the call is answered 403 with an
RFC 6750 `insufficient_scope` challenge naming the scope, so the client can ask the person for
more (step-up authorization, as the MCP authorization specification describes).

Run:  python server.py --port 9000 --resource https://mcp.example.com/mcp
"""

import argparse
import json

import uvicorn
from mcp.server.mcpserver import MCPServer

TOOL_SCOPES = {"read_notes": "mcp:read", "add_note": "mcp:write"}
NOTES: list[str] = ["keyplane protects this server"]

server = MCPServer(name="keyplane-notes", instructions="Notes, read and written with scopes.")


@server.tool()
def read_notes() -> list[str]:
    """Every note (needs mcp:read)."""
    return list(NOTES)


@server.tool()
def add_note(text: str) -> str:
    """Adds a note (needs mcp:write)."""
    NOTES.append(text)
    return f"{len(NOTES)} notes"


class ToolScopes:
    """ASGI middleware: a `tools/call` for a tool whose scope the token lacks is refused with
    403 `insufficient_scope` before the MCP layer sees it."""

    def __init__(self, app, resource_metadata: str | None):
        self.app = app
        self.resource_metadata = resource_metadata

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        held = set()
        for name, value in scope["headers"]:
            if name == b"x-keyplane-scopes":
                held.update(value.decode().split())
        needed = None
        try:
            msg = json.loads(body or b"{}")
            if isinstance(msg, dict) and msg.get("method") == "tools/call":
                needed = TOOL_SCOPES.get((msg.get("params") or {}).get("name"))
        except ValueError:
            pass
        if needed and needed not in held:
            challenge = f'Bearer error="insufficient_scope", scope="{needed}"'
            if self.resource_metadata:
                challenge += f', resource_metadata="{self.resource_metadata}"'
            payload = json.dumps({"error": "insufficient_scope", "scope": needed}).encode()
            await send({"type": "http.response.start", "status": 403, "headers": [
                (b"content-type", b"application/json"),
                (b"www-authenticate", challenge.encode()),
            ]})
            return await send({"type": "http.response.body", "body": payload})

        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--resource", help="the URL clients use for this server (for the challenge)")
    a = p.parse_args()
    metadata = None
    if a.resource:
        scheme, rest = a.resource.split("://", 1)
        host, _, path = rest.partition("/")
        metadata = f"{scheme}://{host}/.well-known/oauth-protected-resource" + (f"/{path}" if path else "")
    app = ToolScopes(server.streamable_http_app(stateless_http=True, json_response=True), metadata)
    # Keep idle connections longer than the proxy in front does (keyplane's gateway pools idle
    # upstream connections for 60 s): a server that closes first can close a connection just as
    # the proxy reuses it, and the request on it is lost.
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", timeout_keep_alive=75)


if __name__ == "__main__":
    main()
