# The status LED, readable from the foot of a ladder (docs/technician.md, "The status LED"):
#   steady on       measuring, and the gateway acknowledged the last batch
#   slow blink      measuring, not delivering (no network, broker or gateway yet, or batches wait)
#   fast blink      a self-test item failed (the console's "E check:" line says which)
#   off             not measuring (no power, or a board file it cannot use)
# A plain LED (board.json "led": {"pin": 2}) or the WS2812 RGB LED of the S3 DevKitC ("type":
# "ws2812": green, yellow, red). update() runs every loop: it allocates nothing and writes the
# LED only when its state changes.
from micropython import const
import time
from machine import Pin

_OK = const(1)      # the modes, by what update() is told
_QUIET = const(2)
_FAIL = const(3)
_PERIOD = (0, 0, 2000, 200)   # ms per blink cycle, by mode (on for the first half)
# GRB order is the driver's business; these are (r, g, b), dim: the LED is seen from metres away
_COLOUR = ((0, 0, 0), (0, 40, 0), (40, 28, 0), (60, 0, 0))
_OFF = (0, 0, 0)


class Led:
    def __init__(self, sec):
        self._np = None
        if sec["type"] == "ws2812":
            from neopixel import NeoPixel  # frozen in the ESP32 firmware; it makes the pin an output
            self._np = NeoPixel(Pin(sec["pin"]), 1)
            self._np[0] = _OFF
            self._np.write()
        else:
            self._pin = Pin(sec["pin"], Pin.OUT, value=0)
        self._mode = 0
        self._on = False
        self._t0 = time.ticks_ms()

    def update(self, now, failing, delivering):
        """failing: a self-test item failed; delivering: the gateway acknowledges what is sent."""
        mode = _FAIL if failing else _OK if delivering else _QUIET
        if mode != self._mode:
            self._mode = mode
            self._t0 = now
            self._on = None   # write it, whatever it showed
        p = _PERIOD[mode]
        on = mode != 0 and (p == 0 or time.ticks_diff(now, self._t0) % p < p >> 1)
        if on == self._on:
            return
        self._on = on
        if self._np is None:
            self._pin.value(1 if on else 0)
        else:
            self._np[0] = _COLOUR[mode] if on else _OFF
            self._np.write()
