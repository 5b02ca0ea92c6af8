"""A user's conversations: list, read and delete sessions (another user's sessions answer 404)."""

from typing import Annotated, Any

from litestar import Request, delete, get
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, QueryParameter

from specai.agents.sessions import Session, StoredMessage
from specai.ids import check_session_id
from specai.server.errors import error_responses
from specai.server.schemas.sessions import MessageOut, SessionDetailOut, SessionListOut, SessionOut
from specai.server.security import principal
from specai.server.state import ServerState


def routes(server: ServerState) -> list[HTTPRouteHandler]:
    """`/sessions` and `/sessions/{session_id}`, bound to this server's state."""

    @get("/sessions", operation_id="ListSessions", tags=["sessions"], responses=error_responses(401))
    async def list_sessions(
        request: Request, limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100
    ) -> SessionListOut:
        """The caller's sessions, most recently used first."""
        found = await server.sessions().list(principal(request).user_id, limit=limit)
        return SessionListOut(sessions=[SessionOut(**_session(s)) for s in found])

    @get(
        "/sessions/{session_id:str}",
        operation_id="GetSession",
        tags=["sessions"],
        responses=error_responses(401, 404),
    )
    async def get_session(session_id: FromPath[str], request: Request) -> SessionDetailOut:
        """One session and all of its messages, oldest first."""
        check_session_id(session_id)
        sessions, owner = server.sessions(), principal(request).user_id
        session = await sessions.get(session_id, owner)
        messages = await sessions.messages(session_id, owner)
        return SessionDetailOut(**_session(session), messages=[_message(m) for m in messages])

    @delete(
        "/sessions/{session_id:str}",
        operation_id="DeleteSession",
        tags=["sessions"],
        status_code=204,
        responses=error_responses(401, 403, 404),
    )
    async def delete_session(session_id: FromPath[str], request: Request) -> None:
        """Delete a session and its messages."""
        await server.sessions().delete(check_session_id(session_id), principal(request).user_id)

    return [list_sessions, get_session, delete_session]


def _session(session: Session) -> dict[str, Any]:
    return {
        "id": session.id,
        "agent": session.agent,
        "created_at": session.created_at.isoformat(),
        "updated_at": session.updated_at.isoformat(),
        "message_count": session.message_count,
    }


def _message(message: StoredMessage) -> MessageOut:
    """The stored message; tool fields only when set (empty ones are left out, as before)."""
    return MessageOut(
        role=message.role,
        content=message.content,
        created_at=message.created_at.isoformat(),
        tool_calls=message.tool_calls or None,
        tool_call_id=message.tool_call_id or None,
        name=message.name or None,
    )
