"""Sends tasks to examples/celery's worker at a steady pace and waits for
every result: prints how many succeeded.

    python3 send.py COUNT EVERY_SECONDS TASK_SECONDS
"""

import sys
import time

from tasks import work

count, every, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
results = []
for _ in range(count):
    results.append(work.delay(seconds))
    time.sleep(every)
done = sum(1 for r in results if r.get(timeout=120) > 0)
print("succeeded", done, flush=True)
