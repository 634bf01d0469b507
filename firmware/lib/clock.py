# Wall-clock time for records. The ESP32's RTC counts from 2000-01-01 after a power cut and keeps
# its value over a soft reset or deep sleep; NTP sets it. A record gets a UTC timestamp only when
# the clock is known, never 2000-01-01 or 1970-01-01; until then it carries uptime alone.
import time
import console

# Seconds from 1970-01-01 to the port's epoch: 2000-01-01 on the ESP32, 1970 elsewhere.
UNIX_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0
# No RTC value earlier than this can be a real time: the firmware did not exist yet.
_PLAUSIBLE_UNIX = 1767225600  # 2026-01-01


class Clock:
    def __init__(self, ntp_host, every_s):
        self.ntp_host = ntp_host
        self.every_ms = every_s * 1000
        self.synced = False
        self._last_try = None
        self._retry_ms = 30000

    def unix(self):
        """UTC Unix seconds, or None while the time is not known."""
        t = int(time.time()) + UNIX_OFFSET
        return t if t >= _PLAUSIBLE_UNIX else None

    def unix_ms(self):
        """UTC Unix milliseconds, or None while the time is not known."""
        t = time.time_ns() // 1000000 + UNIX_OFFSET * 1000
        return t if t >= _PLAUSIBLE_UNIX * 1000 else None

    def due(self, now_ms):
        if self._last_try is None:
            return True
        wait = self.every_ms if self.synced else self._retry_ms
        return time.ticks_diff(now_ms, self._last_try) >= wait

    def sync(self, now_ms):
        """Ask NTP (needs the network). Returns True when the clock was set."""
        self._last_try = now_ms
        try:
            import ntptime
            ntptime.host = self.ntp_host
            ntptime.settime()
        except (OSError, OverflowError, IndexError) as e:
            console.warn("ntp: %s: %r" % (self.ntp_host, e))
            if not self.synced:   # a failed resync leaves a set clock: no fault to show
                console.check("clock", False, "ntp %s: %r: is UDP port 123 open to it?" % (self.ntp_host, e))
            self._retry_ms = min(self._retry_ms * 2, 600000) if not self.synced else self._retry_ms
            return False
        if not self.synced:
            console.info("ntp: clock set, %d" % self.unix())
            console.check("clock", True, "ntp %s" % self.ntp_host)
        self.synced = True
        return True
