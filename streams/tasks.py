"""Deferred tasks' states in Redis: written by the edge that accepted a task and by the drainer that runs it,
read by any edge and by the status API.

A state only moves forward (queued, then running, then one final state:
done, failed or expired) and a final state is never replaced: whichever
drainer finishes a task first gives its answer, and a task run twice (a
drainer died after the upstream answered, before its offset was committed)
still has that one answer. The check and the write are one Lua script.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from surgegate.schemas.deferral import DeferredTask, TaskState, TaskView
from surgegate.settings import RedisTarget
from surgegate.streams.redis_client import async_client

#: How long a task's state is kept after its last change.
TASK_TTL_S = 24 * 3600

#: KEYS: the task. ARGV: the new view (JSON), its rank (0 queued, 1 running, 2 final), ttl ms.
#: Returns the view in force afterwards.
TRANSITION_LUA = """
local cur = redis.call('GET', KEYS[1])
local new = tonumber(ARGV[2])
if cur then
  local state = cjson.decode(cur)['state']
  local rank = 2
  if state == 'queued' then rank = 0 elseif state == 'running' then rank = 1 end
  if rank == 2 or new < rank or (new == 0 and rank == 0) then return cur end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return ARGV[1]
"""

RANK = {"queued": 0, "running": 1, "done": 2, "failed": 2, "expired": 2}


def view_of(task: DeferredTask, state: TaskState, attempts: int = 0, **fields: Any) -> TaskView:
    """``task`` in ``state`` as of now (``fields``: status, result, reason)."""
    return TaskView(id=task.id, state=state, service=task.service, tenant=task.tenant, tier=task.tier,
                    created_at=task.created_at, deadline=task.deadline, attempts=attempts,
                    updated_at=int(time.time() * 1000), **fields)


class TaskBook:
    """Task states under one deployment's Redis prefix."""

    def __init__(self, target: RedisTarget | str, *, prefix: str = "sg:", timeout_s: float = 1.0,
                 ttl_s: float = TASK_TTL_S) -> None:
        self._client = async_client(target, timeout_s=timeout_s)
        self._script = self._client.register_script(TRANSITION_LUA)
        self._prefix = f"{prefix}task:"
        self.ttl_ms = int(ttl_s * 1000)
        self._decoder = msgspec.json.Decoder(TaskView)

    def key(self, task_id: str) -> str:
        return self._prefix + task_id

    async def put(self, view: TaskView) -> TaskView:
        """Write ``view`` unless the task is already as far or further; the view in force afterwards.

        Raises the client's error when Redis cannot answer.
        """
        ttl_ms = self.ttl_ms
        if view.state == "queued":  # kept until its deadline has passed by the usual time
            ttl_ms += max(0, view.deadline - int(time.time() * 1000))
        raw = await self._script(keys=[self.key(view.id)],
                                 args=[msgspec.json.encode(view), RANK[view.state], ttl_ms])
        return self._decoder.decode(raw)

    async def get(self, task_id: str) -> TaskView | None:
        """The task's view, or None if no state is kept for it. Raises the client's error when Redis cannot answer."""
        raw = await self._client.get(self.key(task_id))
        return None if raw is None else self._decoder.decode(raw)

    async def close(self) -> None:
        await self._client.aclose()
