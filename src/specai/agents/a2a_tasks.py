"""specai agents as A2A tasks (a2a-sdk's server side, protocol-neutral parts): who owns a task, where tasks are
stored (specai's database, per owner), and the executor that runs an agent for a task and streams its answer.

A task is one agent run; its contextId is the specai session it continues (a new context is a new session), so a
follow-up message in the same context remembers the conversation. The agent is the one named by the message's
metadata `{"agent": "<id>"}` (the request's metadata too), else the session's agent, else the default agent.
Several server processes may share one PostgreSQL: a task's final state is never undone in the store, which is how
a CancelTask answered by another process stops the run, and SubscribeToTask there follows the stored task.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator, Callable
from typing import Any

from a2a.auth.user import User
from a2a.helpers.proto_helpers import new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext, RequestContextBuilder
from a2a.server.cluster.task_store import ConcurrentTaskModificationError
from a2a.server.context import ServerCallContext
from a2a.server.events import Event, EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.tasks import TaskStore, TaskUpdater
from a2a.types import (
    ListTasksRequest,
    ListTasksResponse,
    Message,
    Part,
    SendMessageRequest,
    SubscribeToTaskRequest,
    Task,
    TaskState,
)
from a2a.utils.constants import DEFAULT_LIST_TASKS_PAGE_SIZE
from a2a.utils.errors import (
    ContentTypeNotSupportedError,
    InternalError,
    InvalidParamsError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from a2a.utils.task import ListTasksCursor, decode_list_tasks_cursor, encode_list_tasks_cursor
from google.protobuf.json_format import MessageToDict, ParseDict
from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from specai.agents.runtime import AgentRuntime, QueryInput, Run
from specai.errors import SpecaiError
from specai.store import Store
from specai.store.schema import a2a_tasks
from specai.store.types import utcnow
from specai.users.access import Principal

AGENT_METADATA_KEY = "agent"  # message (or request) metadata naming the agent to run
FLUSH_SECS = 0.05  # at most one artifact update per task this often (each is a database write)
ARTIFACT_ID = "answer"  # the one artifact a task's answer streams into
FINAL_STATES = tuple(
    TaskState.Name(state)
    for state in (
        TaskState.TASK_STATE_COMPLETED,
        TaskState.TASK_STATE_CANCELED,
        TaskState.TASK_STATE_FAILED,
        TaskState.TASK_STATE_REJECTED,
    )
)
_UPDATED = ("owner_id", "context_id", "state", "status_ns", "task", "updated_at")


class SpecaiUser(User):
    """The A2A SDK's view of a specai account: a call context's user, the owner of the tasks it makes."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    @property
    def is_authenticated(self) -> bool:
        """Always: a request reaches the endpoint only with a valid token (or with auth off, as the local user)."""
        return True

    @property
    def user_name(self) -> str:
        """The account's stable id (never reused): what tasks are owned by."""
        return self.principal.user_id


def principal_of(context: ServerCallContext) -> Principal:
    """The account behind an A2A call; refuses (an internal error) a context no specai request built."""
    user = context.user
    if not isinstance(user, SpecaiUser):
        raise InternalError(message="the call has no specai account")
    return user.principal


def owner_of(context: ServerCallContext) -> str:
    """The owner id of the tasks an A2A call may see (the SDK's OwnerResolver)."""
    return principal_of(context).user_id


# --- storage -------------------------------------------------------------------------------------------------------


def _status_ns(task: Task) -> int | None:
    if task.HasField("status") and task.status.HasField("timestamp"):
        return int(task.status.timestamp.ToNanoseconds())
    return None


def _compact(task: Task) -> Task:
    """The task with each artifact's runs of plain text parts joined into one (a streamed answer arrives as a part
    per chunk; stored, it is one text)."""
    if not any(len(artifact.parts) > 1 for artifact in task.artifacts):
        return task
    compact = Task()
    compact.CopyFrom(task)
    for artifact in compact.artifacts:
        parts = list(artifact.parts)
        merged: list[Part] = []
        for part in parts:
            if merged and _plain(part) and _plain(merged[-1]):
                merged[-1].text += part.text
            else:
                copy = Part()
                copy.CopyFrom(part)
                merged.append(copy)
        del artifact.parts[:]
        artifact.parts.extend(merged)
    return compact


def _plain(part: Part) -> bool:
    return part.WhichOneof("content") == "text" and not (
        part.metadata.fields or part.filename or part.media_type
    )


def _task_of(value: Any) -> Task:
    task = Task()
    ParseDict(value, task, ignore_unknown_fields=True)
    return task


class StoredTasks(TaskStore):
    """The SDK's TaskStore over specai's database (SQLite or PostgreSQL): one row per task, scoped to its owner.

    `store` gives the open store (bound by the server's lifespan after start-up). A task id belongs to the owner
    that first saved it: another owner's save of the same id is refused, never merged.
    """

    def __init__(
        self, store: Callable[[], Store | None], owner: Callable[[ServerCallContext], str] = owner_of
    ):
        self._store = store
        self._owner = owner

    def _open(self) -> Store:
        store = self._store()
        if store is None:
            raise InternalError(message="the task store is not open")
        return store

    async def save(self, task: Task, context: ServerCallContext) -> None:
        """Insert or update the task for the caller. A task that reached a final state keeps it: a save that would
        change it (another server process, sharing the database, canceled the task while this one runs it)
        raises the SDK's ConcurrentTaskModificationError, on which the SDK re-reads the task and stops the run."""
        owner = self._owner(context)
        now = utcnow()
        row = {
            "task_id": task.id,
            "owner_id": owner,
            "context_id": task.context_id,
            "state": TaskState.Name(task.status.state),
            "status_ns": _status_ns(task),
            "task": MessageToDict(_compact(task)),
            "created_at": now,
            "updated_at": now,
        }
        async with self._open().transaction() as conn:
            dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            statement = dialect_insert(a2a_tasks).values(**row)
            statement = statement.on_conflict_do_update(
                index_elements=["task_id"],
                set_={name: statement.excluded[name] for name in _UPDATED},
                where=and_(
                    a2a_tasks.c.owner_id == owner,
                    or_(
                        a2a_tasks.c.state.not_in(FINAL_STATES), a2a_tasks.c.state == statement.excluded.state
                    ),
                ),
            )
            result = await conn.execute(statement.returning(a2a_tasks.c.task_id))
            if result.first() is not None:
                return
            stored = await conn.scalar(select(a2a_tasks.c.owner_id).where(a2a_tasks.c.task_id == task.id))
        if stored != owner:
            raise InternalError(message=f"task {task.id} belongs to another account")
        raise ConcurrentTaskModificationError(task.id)

    async def get(self, task_id: str, context: ServerCallContext) -> Task | None:
        """The caller's task, or None (also when it is another account's)."""
        owner = self._owner(context)
        async with self._open().connect() as conn:
            found = await conn.scalar(
                select(a2a_tasks.c.task).where(a2a_tasks.c.task_id == task_id, a2a_tasks.c.owner_id == owner)
            )
        return None if found is None else _task_of(found)

    async def list(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        """The caller's tasks, newest status first (tasks without a timestamp last), filtered and paged."""
        owner = self._owner(context)
        table = a2a_tasks.c
        where: list[Any] = [table.owner_id == owner]
        if params.context_id:
            where.append(table.context_id == params.context_id)
        if params.status:
            where.append(table.state == TaskState.Name(params.status))
        if params.HasField("status_timestamp_after"):
            where.append(table.status_ns >= params.status_timestamp_after.ToNanoseconds())
        page_size = params.page_size or DEFAULT_LIST_TASKS_PAGE_SIZE
        query = select(table.task_id, table.status_ns, table.task).where(*where)
        if params.page_token:
            query = query.where(_after(params.page_token))
        query = query.order_by(
            table.status_ns.is_(None).asc(), table.status_ns.desc(), table.task_id.desc()
        ).limit(page_size + 1)
        async with self._open().connect() as conn:
            total = await conn.scalar(select(func.count()).select_from(a2a_tasks).where(*where))
            rows = (await conn.execute(query)).all()
        page = rows[:page_size]
        token = None
        if len(rows) > page_size:
            last = page[-1]
            token = encode_list_tasks_cursor(
                ListTasksCursor(timestamp_ns=last.status_ns, task_id=last.task_id)
            )
        return ListTasksResponse(
            tasks=[_task_of(row.task) for row in page],
            total_size=int(total or 0),
            next_page_token=token,
            page_size=page_size,
        )

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        """Forget the caller's task (another account's is left alone)."""
        owner = self._owner(context)
        async with self._open().transaction() as conn:
            await conn.execute(
                delete(a2a_tasks).where(a2a_tasks.c.task_id == task_id, a2a_tasks.c.owner_id == owner)
            )


def _after(page_token: str) -> Any:
    """The rows strictly after a page token's task in the ListTasks order."""
    cursor = decode_list_tasks_cursor(page_token)
    if cursor is None:
        raise InvalidParamsError(message=f"invalid page token: {page_token}")
    table = a2a_tasks.c
    if cursor.timestamp_ns is None:
        return and_(table.status_ns.is_(None), table.task_id < cursor.task_id)
    return or_(
        table.status_ns < cursor.timestamp_ns,
        and_(table.status_ns == cursor.timestamp_ns, table.task_id < cursor.task_id),
        table.status_ns.is_(None),
    )


# --- running agents ------------------------------------------------------------------------------------------------


class RunRequest(RequestContext):
    """A request context that carries the agent run prepared for it (validated before any task exists)."""

    run: Run | None = None


def _agent_named(*metadata: dict[str, Any]) -> str | None:
    for found in metadata:
        name = found.get(AGENT_METADATA_KEY)
        if name is not None:
            if not isinstance(name, str) or not name:
                raise InvalidParamsError(message=f"metadata '{AGENT_METADATA_KEY}' must name an agent")
            return name
    return None


def _check_parts(message: Message) -> None:
    """Agents read text: a file or data part, or text of another media type, is refused before a task exists."""
    for part in message.parts:
        kind = part.WhichOneof("content")
        media = part.media_type
        if kind != "text" or (media and not media.startswith("text/")):
            raise ContentTypeNotSupportedError(
                message=f"specai agents take text parts (text/plain); this message has a {media or kind} part"
            )


def _camel(value: Any) -> Any:
    """A run's metadata in the protocol's JSON style: camelCase keys, timestamps in UTC with a `Z`."""
    if isinstance(value, dict):
        return {_camel_key(key): _camel(item) for key, item in value.items()}
    if isinstance(value, str) and value.endswith("+00:00"):
        return value.removesuffix("+00:00") + "Z"
    return value


def _camel_key(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(word.capitalize() for word in rest)


class RunContextBuilder(RequestContextBuilder):
    """Builds each request's context and prepares its run: an unknown agent, an empty message, a context id that
    is not a usable session id (or is another account's session) are refused as invalid params, before a task is
    made."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    async def build(
        self,
        context: ServerCallContext,
        params: SendMessageRequest | None = None,
        task_id: str | None = None,
        context_id: str | None = None,
        task: Task | None = None,
    ) -> RequestContext:
        """The request's context, with its run prepared (as the caller, in the session its context id names)."""
        request = RunRequest(
            call_context=context, request=params, task_id=task_id, context_id=context_id, task=task
        )
        if params is None:
            return request
        _check_parts(params.message)
        principal = principal_of(context)
        agent = _agent_named(MessageToDict(params.message.metadata), request.metadata)
        query = QueryInput(message=request.get_user_input(), agent=agent, session_id=request.context_id)
        try:
            request.run = await self.runtime.prepare(query, principal.user_id, principal)
        except SpecaiError as exc:
            raise InvalidParamsError(message=exc.message) from None
        return request


class _Answer:
    """The answer's text as artifact updates: a chunk goes at once unless one went less than `every` seconds ago;
    then it waits, with the chunks after it, until that much time has passed (a timer sends them)."""

    def __init__(self, updater: TaskUpdater, every: float) -> None:
        self.updater = updater
        self.every = every
        self.pending: list[str] = []
        self.sent = False
        self.last = -math.inf
        self.timer: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()

    async def add(self, text: str) -> None:
        """One more chunk of the answer."""
        self.pending.append(text)
        wait = self.last + self.every - asyncio.get_running_loop().time()
        if wait <= 0:
            await self.flush()
        elif self.timer is None:
            self.timer = asyncio.ensure_future(self._later(wait))

    async def _later(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self.timer = None  # from here on a flush is under way: `drop` leaves it alone
        await self.flush()

    async def flush(self) -> None:
        """Send what is pending now."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        async with self.lock:
            if not self.pending:
                return
            text = "".join(self.pending)
            self.pending.clear()
            self.last = asyncio.get_running_loop().time()
            await self.updater.add_artifact(
                [new_text_part(text)],
                artifact_id=ARTIFACT_ID,
                name="answer",
                append=self.sent,
                last_chunk=False,
            )
            self.sent = True

    def drop(self) -> None:
        """Send nothing more (the run was stopped)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pending.clear()


class AgentTaskExecutor(AgentExecutor):
    """Runs a request's prepared agent run as an A2A task: submitted, working, the answer as artifact updates (one
    per streamed chunk, appended to one artifact; chunks coming faster than one per `flush_secs` are sent together,
    as each update is a database write), then completed or failed. A cancel stops the run, and with it
    the model call upstream, then marks the task canceled; so does the server stopping (`stopping` set), which
    marks it failed with code `shutting_down`."""

    def __init__(self, stopping: asyncio.Event | None = None, flush_secs: float = FLUSH_SECS) -> None:
        self._stopping = stopping
        self._flush_secs = flush_secs
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._cancelling: set[str] = set()
        self._halting: set[str] = set()

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Stream the run's events into the task."""
        run = context.run if isinstance(context, RunRequest) else None
        task_id, context_id = context.task_id, context.context_id
        if run is None or task_id is None or context_id is None or context.message is None:
            raise InternalError(message="the request has no prepared agent run")
        updater = TaskUpdater(event_queue, task_id, context_id)
        if context.current_task is None:
            task = Task(id=task_id, context_id=context_id, history=[context.message])
            task.status.state = TaskState.TASK_STATE_SUBMITTED
            await event_queue.enqueue_event(task)
        current = asyncio.current_task()
        watch: asyncio.Task[Any] | None = None
        if current is not None:
            self._running[task_id] = current
            if self._stopping is not None:
                watch = asyncio.ensure_future(self._stopping.wait())
                watch.add_done_callback(lambda done: self._halt(task_id, done))
        answer = _Answer(updater, self._flush_secs)
        try:
            await updater.start_work()
            await self._stream(run, updater, answer)
        except asyncio.CancelledError:
            answer.drop()
            if task_id not in self._cancelling and task_id not in self._halting:
                raise
            if current is not None:
                current.uncancel()
            if task_id in self._cancelling:
                await updater.cancel(self._message(updater, "canceled at the caller's request"))
            else:
                stopped = self._message(updater, "the server stopped while the agent was answering")
                stopped.metadata.update({"code": "shutting_down"})
                await updater.failed(stopped)
        finally:
            answer.drop()
            if watch is not None:
                watch.cancel()
            self._running.pop(task_id, None)
            self._cancelling.discard(task_id)
            self._halting.discard(task_id)

    def _halt(self, task_id: str, watch: asyncio.Future[Any]) -> None:
        """The server is stopping (unless the watch was called off): end the task's run."""
        if watch.cancelled():
            return
        running = self._running.get(task_id)
        if running is not None and not running.done() and task_id not in self._cancelling:
            self._halting.add(task_id)
            running.cancel()

    async def _stream(self, run: Run, updater: TaskUpdater, answer: _Answer) -> None:
        async for event in run.events():
            if event.type == "chunk":
                await answer.add(event.data["text"])
                continue
            await answer.flush()  # the text so far goes before whatever comes next
            if event.type == "tool_call":
                name = event.data.get("name", "")
                await updater.update_status(
                    TaskState.TASK_STATE_WORKING,
                    self._message(updater, f"calling tool {name}"),
                    metadata={"specai": {"tool_call": name}},
                )
            elif event.type == "end":
                metadata = {
                    "specai": _camel(
                        {"agent": run.agent.id, "session_id": run.session_id, **event.data["metadata"]}
                    )
                }
                await updater.update_status(TaskState.TASK_STATE_COMPLETED, metadata=metadata)
            elif event.type == "error":
                message = self._message(updater, event.data["message"])
                message.metadata.update({"code": event.data.get("code", "error")})
                await updater.failed(message)

    @staticmethod
    def _message(updater: TaskUpdater, text: str) -> Message:
        return updater.new_agent_message([new_text_part(text)])

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Stop the task's run (its upstream call is closed) and mark it canceled."""
        task_id = context.task_id
        running = self._running.get(task_id) if task_id else None
        if running is None or running.done():
            if task_id and context.context_id:
                await TaskUpdater(event_queue, task_id, context.context_id).cancel()
            return
        assert task_id is not None
        self._cancelling.add(task_id)
        running.cancel()
        await asyncio.wait({running}, timeout=10)


class TaskRequestHandler(DefaultRequestHandler):
    """a2a-sdk's request handler, plus SubscribeToTask of a task another server process runs (several processes
    share one PostgreSQL): its stored state, re-read every `poll_secs` and sent whenever it changed, until it is
    final or this server stops. A task this process runs is streamed by the SDK itself, event by event."""

    def __init__(
        self, *args: Any, stopping: asyncio.Event | None = None, poll_secs: float = 0.25, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._stopping = stopping or asyncio.Event()
        self._poll_secs = poll_secs

    async def on_message_send(self, params: SendMessageRequest, context: ServerCallContext) -> Message | Task:
        """The SDK's answer, with the streamed answer's text parts joined into one (as GetTask shows it)."""
        result = await super().on_message_send(params, context)
        return _compact(result) if isinstance(result, Task) else result

    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event, None]:
        """The task's events as they come (here), or its stored state as it changes (elsewhere)."""
        if not params.id or await self._active_task_registry.get(params.id) is not None:
            async for event in super().on_subscribe_to_task(params, context):
                yield event
            return
        stored = await self._versioned_store.get(params.id, context)
        if stored is None:
            raise TaskNotFoundError
        task = stored.task
        if TaskState.Name(task.status.state) in FINAL_STATES:
            raise UnsupportedOperationError(
                message=f"Task {params.id} is in terminal state: {TaskState.Name(task.status.state)}"
            )
        yield task
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._poll_secs)
            again = await self._versioned_store.get(params.id, context)
            if again is None:
                return
            if again.task != task:
                task = again.task
                yield task
            if TaskState.Name(task.status.state) in FINAL_STATES:
                return
