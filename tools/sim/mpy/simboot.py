# The simulator's entry point: `micropython -m simboot sim.json` in the node's folder (MICROPYPATH =
# .sim:.mpylib:.frozen, links there to tools/sim/mpy and build/mpylib: see runner.SIM_LINK). Sets up
# the virtual board (simsetup), then runs boot.py and main.py from the node's flash (a littlefs
# image), mounted at '/', as the ESP32 does. Exit codes and state.json: see docs/simulator.md.
import sys
import gc
import os
import simcore


def _run(name, g):
    try:
        os.stat(name)
    except OSError:
        return
    execfile(name, g)


def _qstr_room():
    """Intern placeholder names until MicroPython opens a pool of interned strings (qstrs) of at
    least 1000 entries. The simulator's own modules intern about 620 names before the firmware
    starts (on the board those of the frozen modules are in flash), so the firmware's names would
    open pools the board never needs: one of 640 names (7 KB) at its first, one of 1280 (14 KB,
    in one piece, in a heap fragmented by then) at its 640th. With this the firmware pays nothing
    for qstr pools here; on the board its names take pools of 10, 20, ... 640 entries (about
    7.6 KB over its life, in pieces of at most 3.8 KB). docs/simulator.md, "Heap"."""
    gc.disable()   # the names' temporary strings are garbage; a collection here would hide the jump
    try:
        for i in range(4000):
            a = gc.mem_alloc()
            getattr(simcore, "_q%d" % i, None)   # interns the name
            if gc.mem_alloc() - a > 10000:   # 1000 entries of 10 or more bytes each: the pool wanted
                break
    finally:
        gc.enable()
    gc.collect()


def _main():
    import simsetup
    budget = simsetup.setup(sys.argv[1])
    del sys.modules["simsetup"]
    del simsetup
    gc.collect()
    base = gc.mem_alloc()
    if budget:   # the runner's nodes: room for the firmware's names (counted in sim_heap)
        _qstr_room()
    simcore.stats["sim_heap"] = gc.mem_alloc()
    simcore.stats["sim_qstr_room"] = simcore.stats["sim_heap"] - base
    if budget:  # leave the firmware exactly `budget` bytes of heap: the rest is ballast
        simcore.ballast = hold = []
        n = gc.mem_free() - budget
        while n > 64:   # in pieces: the free heap is not one block
            try:
                hold.append(bytearray(n - 64))
            except MemoryError:
                n //= 2
                continue
            n = gc.mem_free() - budget
        gc.collect()
        simcore._held = gc.mem_alloc() - simcore.stats["sim_heap"]
    simcore.stats["firmware_heap"] = gc.mem_free()
    g = {"__name__": "__main__"}
    repl = simcore.repl
    try:
        try:
            _run("boot.py", g)
        except Exception as e:  # the board reports it and still runs main.py
            if not simcore._cut:
                sys.print_exception(e)
        if repl == "raw":   # a soft reset in raw REPL mode runs boot.py only, as the ESP32's
            return None
        _run("main.py", g)
        if repl:
            return None
        cause, code = "repl", 2   # main.py returned: the board sits at the REPL
    except SystemExit:
        cause, code = "soft", 3   # sys.exit() in the firmware: a soft reset
    except KeyboardInterrupt as e:  # Ctrl-C in the terminal that runs the simulator: not a crash
        if repl:   # on a serial port: the board's REPL takes over (micropython -i)
            sys.print_exception(e)
            return None
        cause, code = "interrupted", 130
    except BaseException as e:
        if not simcore._cut:   # after a power cut nothing is printed: the board is off
            sys.print_exception(e)
        cause, code = "crash", 1
    sys.exit(simcore.stop(cause, code))


_main()   # returns only on a serial port (simcore.repl): micropython -i then runs the REPL
