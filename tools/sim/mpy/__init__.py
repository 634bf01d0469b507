"""MicroPython modules of the simulator (on MICROPYPATH); `scenario` is imported by CPython too."""
