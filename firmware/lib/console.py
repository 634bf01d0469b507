# Messages on the serial console: what a technician sees with `mpremote` or a terminal.
# One line each, prefixed with the uptime in seconds so a log can be read without a clock.
import time

_T0 = time.ticks_ms()


def say(level, msg):
    print("%8d %s %s" % (time.ticks_diff(time.ticks_ms(), _T0) // 1000, level, msg))


def info(msg):
    say("I", msg)


def warn(msg):
    say("W", msg)


def error(msg):
    say("E", msg)
