"""examples/python_basic.py - the KeyMesh Python binding in one process.

    make && PYTHONPATH=bindings/python /usr/bin/python3 examples/python_basic.py

SyncKeyPool(keys=[...]) keeps its pool in a private segment, shared with
the processes this one forks; KeyPool is the same for asyncio.  No network:
the provider call is a sleep.
"""
import asyncio
import time

from keymesh import KeyPool, NoAvailableKeyError, SchedulerStrategy, SyncKeyPool

KEYS = ["sk-demo-aaaa1111", "sk-demo-bbbb2222", "sk-demo-cccc3333"]

pool = SyncKeyPool(keys=KEYS, strategy=SchedulerStrategy.LEAST_BUSY,
                   default_cooldown=60.0, max_failures=10, acquire_timeout=30.0)
print(pool)                                  # secrets never printed

key = pool.acquire()
t0 = time.monotonic()
time.sleep(0.01)                             # call the provider with `key`
pool.release(key, latency=time.monotonic() - t0)

key = pool.acquire()
pool.mark_rate_limited(key, cooldown=5)      # it answered 429, Retry-After: 5
print("available now:", pool.available_count())

with pool.lease(estimated_tokens=500) as lease:   # acquire, time, report
    print("leased", lease)                   # <Lease key_id='key-2' key='sk-…2222' ...>
    lease.usage(input_tokens=400, output_tokens=80)

for k in pool.status()["keys"]:
    print(k["id"], k["key"], k["state"], "acquired", k["acquired"], "ok", k["success"])
pool.close()


async def main() -> None:
    apool = KeyPool(keys=KEYS, strategy=SchedulerStrategy.ROUND_ROBIN)
    async def one(i: int) -> str:
        async with apool.lease() as lease:   # awaits, never blocks the loop
            await asyncio.sleep(0.01)
            return lease.key_id
    print("async:", await asyncio.gather(*(one(i) for i in range(6))))
    try:
        await apool.acquire(timeout=0.1)
    except NoAvailableKeyError:
        pass
    await apool.close()

asyncio.run(main())
