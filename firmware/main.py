# Runs after boot.py on every start: the node's measuring loop, under a crash handler (lib/crash.py,
# loaded only after a crash: code is heap). What escapes node (its import included; not a
# technician's Ctrl-C) is written to crash.txt and counted in crash.count, fails an app on trial
# (app.failed: boot.py puts the previous app back), and resets the board. At a start after a crash,
# crash.safe_mode() runs safemode.main() instead of node after 3 crashes in a row, unless an app is
# on trial (an app without safemode.py starts normally). Every name here is heap for good, and the
# form of this file moves the smallest heap the node starts in (bench/start_heap.py): measure a change.
import os

try:
    if "crash.count" not in os.listdir() or not __import__("crash").safe_mode():
        import node
        node.main()
except Exception as e:
    try:
        __import__("crash").died(e)
    except Exception:   # no heap left for the report: the reset all the same
        pass
    __import__("time").sleep(5)   # waits: a crash loop writes the flash at most every 5 s; Ctrl-C works
    __import__("machine").reset()   # never a board left at the prompt
