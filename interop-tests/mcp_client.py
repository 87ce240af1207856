"""Drives the official MCP Python SDK's client (mcp, PyPI) against an MCP server behind keyplane's
gateway, from nothing but the server's URL, and plays the person in the browser with plain
HTTP (sign in to keyplane's console, allow on the consent page). Prints one JSON line per step
for crates/keyplane/tests/it/mcp.rs to check; exits non-zero when a step fails.

Environment: MCP_URL (the server's URL through the gateway), KEYPLANE_URL (keyplane's API),
MEMBER_EMAIL and MEMBER_PASSWORD (a member with a console password), ADMIN_KEY (to introspect
the token the SDK got), and CLIENT_METADATA_URL to identify the client by its client ID metadata
document instead of registering it.
"""

import asyncio
import html
import json
import os
import re
import sys
import time
from urllib.parse import parse_qs, urlencode, urljoin, urlparse

import httpx2
from mcp import ClientSession
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client

def create_mcp_http_client(auth):
    """The SDK's client settings (MCP timeouts, no redirects followed), but a new connection per
    request: under the test suite's load a pooled keep-alive connection can be closed by the
    server just as the client reuses it (HTTP/1.1's race, which httpx does not retry for a POST),
    and this test is about OAuth, not connection reuse."""
    return httpx2.AsyncClient(
        auth=auth,
        timeout=httpx2.Timeout(30.0, read=300.0),
        limits=httpx2.Limits(max_keepalive_connections=0),
    )
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

MCP_URL = os.environ["MCP_URL"]
KEYPLANE = os.environ["KEYPLANE_URL"]
EMAIL = os.environ["MEMBER_EMAIL"]
PASSWORD = os.environ["MEMBER_PASSWORD"]
ADMIN_KEY = os.environ["ADMIN_KEY"]
CLIENT_METADATA_URL = os.environ.get("CLIENT_METADATA_URL") or None
REDIRECT = "http://127.0.0.1:9/callback"


def say(step, **details):
    print(json.dumps({"step": step, **details}), flush=True)


class Memory:
    """The SDK's token storage, kept in memory (and looked at by the checks)."""

    def __init__(self):
        self.tokens = None
        self.client = None
        self.history = []

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken):
        self.tokens = tokens
        self.history.append(tokens)

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, info: OAuthClientInformationFull):
        self.client = info


class Person:
    """The person at the browser: keyplane's console, by plain HTTP with its cookies."""

    def __init__(self):
        self.http = httpx2.AsyncClient(follow_redirects=False, timeout=30)
        self.result = None
        self.consents = 0
        self.scopes_asked = []

    async def get(self, url):
        return await self.http.get(urljoin(KEYPLANE, url))

    async def redirect(self, authorization_url: str):
        """The SDK opens the browser here: sign in when asked, allow, follow to the app."""
        asked = parse_qs(urlparse(authorization_url).query)
        self.scopes_asked.append(asked.get("scope", [""])[0])
        assert asked.get("code_challenge_method") == ["S256"], asked
        assert asked.get("resource"), "the SDK sends RFC 8707 resource"
        r = await self.http.get(authorization_url)
        url = authorization_url
        for _ in range(10):
            if r.status_code in (302, 303, 307):
                location = r.headers["location"]
                if location.startswith(REDIRECT):
                    q = parse_qs(urlparse(location).query)
                    self.result = AuthorizationCodeResult(
                        code=q["code"][0], state=q.get("state", [None])[0], iss=q.get("iss", [None])[0]
                    )
                    return
                url = urljoin(url, location)
                r = await self.http.get(url)
                continue
            page = r.text
            if 'action="/console/sign-in"' in page:
                csrf = html.unescape(re.search(r'name="csrf" value="([^"]+)"', page).group(1))
                nxt = html.unescape(re.search(r'name="next" value="([^"]+)"', page).group(1))
                r = await self.http.post(
                    urljoin(KEYPLANE, "/console/sign-in"),
                    data={"csrf": csrf, "method": "member", "email": EMAIL, "password": PASSWORD, "next": nxt},
                )
                continue
            if 'action="/console/authorize"' in page:
                form = page[page.index('action="/console/authorize"'):]
                form = form[: form.index("</form>")]
                fields = [
                    (html.unescape(n), html.unescape(v))
                    for n, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form)
                ]
                fields.append(("decision", "approve"))
                self.consents += 1
                r = await self.http.post(
                    urljoin(KEYPLANE, "/console/authorize"),
                    content=urlencode(fields),
                    headers={"content-type": "application/x-www-form-urlencoded"},
                )
                continue
            raise AssertionError(f"unexpected page {r.status_code} at {url}: {page[:500]}")
        raise AssertionError("too many redirects")

    async def callback(self) -> AuthorizationCodeResult:
        result, self.result = self.result, None
        assert result is not None, "no code came back"
        return result


async def call(session, tool, **args):
    result = await session.call_tool(tool, args)
    return result


async def main():
    storage = Memory()
    person = Person()
    provider = OAuthClientProvider(
        server_url=MCP_URL,
        client_metadata=OAuthClientMetadata(
            client_name="MCP SDK test client",
            redirect_uris=[REDIRECT],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=person.redirect,
        callback_handler=person.callback,
        client_metadata_url=CLIENT_METADATA_URL,
    )
    async with create_mcp_http_client(auth=provider) as http:
        async with streamable_http_client(MCP_URL, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                async with httpx2.AsyncClient(timeout=30) as raw:
                    seen = (await raw.post(urljoin(KEYPLANE, "/v1/oauth/token/introspect"),
                                           headers={"authorization": f"Bearer {ADMIN_KEY}"},
                                           data={"token": storage.tokens.access_token})).json()
                say("connected", consents=person.consents, client_id=storage.client.client_id,
                    scope=storage.tokens.scope, scopes_asked=person.scopes_asked,
                    aud=seen.get("aud"), sub=seen.get("sub"), active=seen.get("active"))
                tools = await session.list_tools()
                say("tools", names=sorted(t.name for t in tools.tools))
                notes = await call(session, "read_notes")
                say("read_notes", error=notes.is_error, text=[c.text for c in notes.content])
                first_token = storage.tokens.access_token
                # add_note needs mcp:write, which the first consent did not give: 403
                # insufficient_scope, and the SDK asks the person for more (step-up).
                added = await call(session, "add_note", text="written through keyplane")
                say("add_note", error=added.is_error, text=[c.text for c in added.content],
                    consents=person.consents, scope=storage.tokens.scope, scopes_asked=person.scopes_asked)

    # Refresh: the SDK trades its refresh token once the access token has expired.
    expiry = storage.tokens.expires_in or 0
    used_refresh = storage.tokens.refresh_token
    await asyncio.sleep(expiry + 1)
    async with create_mcp_http_client(auth=provider) as http:
        async with streamable_http_client(MCP_URL, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                notes = await call(session, "read_notes")
                say("refreshed", error=notes.is_error, consents=person.consents,
                    rotated=storage.tokens.refresh_token != used_refresh,
                    text=[c.text for c in notes.content])
    fresh_token = storage.tokens.access_token

    # The used refresh token presented again (a thief's replay): refused, and the whole grant
    # dies, so the live access token stops too.
    async with httpx2.AsyncClient(timeout=30) as raw:
        meta = (await raw.get(urljoin(KEYPLANE, "/.well-known/oauth-authorization-server"))).json()
        replay = await raw.post(meta["token_endpoint"], data={
            "grant_type": "refresh_token", "refresh_token": used_refresh,
            "client_id": storage.client.client_id,
        })
        call_after = await raw.post(MCP_URL, headers={
            "authorization": f"Bearer {fresh_token}", "accept": "application/json, text/event-stream",
            "content-type": "application/json",
        }, content=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}))
        say("replayed", status=replay.status_code, error=replay.json().get("error"),
            call_status=call_after.status_code, first_token_unused=first_token != fresh_token)

    # Connect again (a new consent), then revoke the app in the console: the next call fails.
    storage.tokens = None
    async with create_mcp_http_client(auth=provider) as http:
        async with streamable_http_client(MCP_URL, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                notes = await call(session, "read_notes")
                say("reconnected", error=notes.is_error, consents=person.consents)
    token = storage.tokens.access_token
    page = (await person.get("/console/apps")).text
    grant = re.search(r'data-grant-id="([^"]+)" data-client-id="' + re.escape(storage.client.client_id), page)
    csrf = html.unescape(re.search(r'name="csrf-token" content="([^"]+)"', page).group(1))
    revoked = await person.http.post(urljoin(KEYPLANE, f"/console/apps/{grant.group(1)}/revoke"),
                                     headers={"x-csrf-token": csrf})
    async with httpx2.AsyncClient(timeout=30) as raw:
        after = await raw.post(MCP_URL, headers={
            "authorization": f"Bearer {token}", "accept": "application/json, text/event-stream",
            "content-type": "application/json",
        }, content=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}))
    say("revoked", console_status=revoked.status_code, call_status=after.status_code,
        challenge=after.headers.get("www-authenticate", ""))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # the test prints what went wrong
        say("failed", error=f"{type(e).__name__}: {e}")
        raise
