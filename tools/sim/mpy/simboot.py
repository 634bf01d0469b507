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


def _main():
    import simsetup
    budget = simsetup.setup(sys.argv[1])
    del sys.modules["simsetup"]
    del simsetup
    gc.collect()
    simcore.stats["sim_heap"] = gc.mem_alloc()
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
